//! The HTTP/1.1 the fast path speaks, in three parts: which requests it takes and the head it
//! sends for them ([`request`](super::request)), where a response ends and the head the client
//! gets for it ([`response`](super::response)), and chunked bodies
//! ([`chunked`](super::chunked)). Here: what they share.

pub use super::chunked::Chunked;
pub use super::request::{parse_request, Parsed, Prepared};
pub use super::response::{parse_response, Framing, ResponseHead};

/// A message the fast path cannot follow: not HTTP/1, or contradictory framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed HTTP/1 message")]
pub struct Malformed;

/// A `Content-Length` value: `1*DIGIT` (RFC 9110 §8.6) between optional spaces or tabs; no
/// sign, no other whitespace, no overflow.
pub(super) fn content_length(value: &[u8]) -> Option<u64> {
    let v = trim_ows(value);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Strips optional whitespace (SP and HTAB only, RFC 9110 §5.6.3).
pub(super) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The comma-separated tokens of a header value (`Connection: keep-alive, Upgrade`), trimmed.
pub(super) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

pub(super) use crate::forward::is_hop_by_hop;
