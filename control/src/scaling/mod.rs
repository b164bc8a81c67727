//! What the control loops decide from when several gateway replicas serve: each replica's
//! activity ([`activity`]), gathered by the leader from its peers ([`peers`]), and who the
//! leader is ([`leader`]).

pub mod activity;
pub mod leader;
pub mod peers;
