//! Writing complete responses (errors, admin answers) to the client.

use bytes::Bytes;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Writes a whole response: status, content type, extra headers and body.
pub async fn send(
    session: &mut Session,
    status: u16,
    content_type: &str,
    extra: &[(&'static str, String)],
    body: Vec<u8>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3 + extra.len()))?;
    resp.insert_header("Content-Type", content_type)?;
    resp.insert_header("Content-Length", body.len().to_string())?;
    for (k, v) in extra {
        resp.insert_header(*k, v.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), body.is_empty() || head_only)
        .await?;
    if !body.is_empty() && !head_only {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

/// The JSON error body `{"code": N, "message": "..."}`.
pub fn error_body(code: u16, message: &str) -> Vec<u8> {
    serde_json::json!({"code": code, "message": message})
        .to_string()
        .into_bytes()
}

/// Writes a JSON error.
pub async fn error(
    session: &mut Session,
    code: u16,
    message: &str,
    extra: &[(&'static str, String)],
) -> Result<()> {
    send(
        session,
        code,
        "application/json",
        extra,
        error_body(code, message),
    )
    .await
}

/// A whole JSON error response as bytes, ending the connection (`Connection: close`): what the
/// fast path writes straight to the client's socket.
pub fn error_bytes(
    code: u16,
    message: &str,
    extra: &[(&'static str, String)],
    head_only: bool,
) -> Vec<u8> {
    let body = error_body(code, message);
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in extra {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if !head_only {
        out.extend_from_slice(&body);
    }
    out
}
