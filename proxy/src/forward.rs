//! The forwarding rules both of the gateway's paths follow — the fast path
//! ([`crate::fastpath`], which writes a request head as bytes) and Pingora's proxy
//! ([`crate::gateway`], which edits a header map) — written once: which of a client's headers
//! stop at the gateway, the `X-Forwarded-*` it writes instead, what is idempotent and what may
//! be sent twice. The admission of requests to replicas is `control::admission`, the hold while
//! a function starts [`crate::activator`], the JSON errors [`crate::respond`];
//! `tests/http_hostile.rs` checks that both paths forward the same head.

/// The `X-Forwarded-*` headers the gateway writes itself; a client's are never passed on.
pub const FORWARDED: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-prefix",
];

/// Headers that concern one connection, not the message (RFC 9110 §7.6.1), as Pingora's proxy
/// strips them from requests.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a client's request header stops at the gateway: hop-by-hop, named by its
/// `Connection` header (`nominated`), one the gateway writes itself, or a name holding `_`
/// (it could alias one of ours through a server that maps `-` to `_`; nginx drops them too).
pub fn drops_request_header(name: &[u8], nominated: &[&[u8]]) -> bool {
    is_hop_by_hop(name)
        || name.contains(&b'_')
        || FORWARDED
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
        || nominated.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// `X-Forwarded-For` as the function gets it: the client's chain with the client's address
/// appended (or left as it came when there is no address, a Unix socket).
pub fn forwarded_for(previous: Option<&[u8]>, client_ip: &str, out: &mut Vec<u8>) {
    match (previous, client_ip.is_empty()) {
        (Some(prev), false) => {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
            out.extend_from_slice(client_ip.as_bytes());
        }
        (None, _) => out.extend_from_slice(client_ip.as_bytes()),
        (Some(prev), true) => out.extend_from_slice(prev),
    }
}

/// Idempotent methods (RFC 9110 §9.2.2): sending one twice has the effect of sending it once.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Whether a request whose attempt failed before any response may be sent again: when none of
/// it was written to the function, or when its method is idempotent. A `POST` that may have
/// reached the function is never sent twice.
pub fn may_resend(idempotent: bool, written: bool) -> bool {
    !written || idempotent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_stops_at_the_gateway() {
        for name in [
            "Connection",
            "keep-alive",
            "TE",
            "X_Forwarded_For",
            "x-forwarded-host",
        ] {
            assert!(drops_request_header(name.as_bytes(), &[]), "{name}");
        }
        assert!(drops_request_header(b"X-Named", &[b"x-named"]));
        assert!(!drops_request_header(b"X-Custom", &[b"x-named"]));
        assert!(!drops_request_header(b"Host", &[]));
    }

    #[test]
    fn what_may_be_sent_twice() {
        assert!(may_resend(false, false) && may_resend(true, true));
        assert!(!may_resend(is_idempotent("POST"), true));
        assert!(may_resend(is_idempotent("PUT"), true));
    }
}
