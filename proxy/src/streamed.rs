//! Writing a response whose body is produced as it goes: a deploy's progress, followed logs.

use bytes::Bytes;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::sync::mpsc;

/// Writes `first` at once, then each chunk of `rest` as it comes, chunked. Returns when `rest`
/// ends or the client leaves; the receiver is dropped then, which tells the producer to stop.
pub async fn send(
    session: &mut Session,
    (status, content_type, first): (u16, &str, Vec<u8>),
    extra: &[(&'static str, String)],
    mut rest: mpsc::Receiver<Vec<u8>>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3 + extra.len()))?;
    resp.insert_header("Content-Type", content_type)?;
    resp.insert_header("Transfer-Encoding", "chunked")?;
    resp.insert_header("Cache-Control", "no-cache")?;
    for (k, v) in extra {
        resp.insert_header(*k, v.as_str())?;
    }
    if session.req_header().method == http::Method::HEAD {
        return session.write_response_header(Box::new(resp), true).await;
    }
    session.write_response_header(Box::new(resp), false).await?;
    if !first.is_empty() {
        session
            .write_response_body(Some(Bytes::from(first)), false)
            .await?;
    }
    loop {
        // While waiting for the next chunk, notice a client that closes its connection.
        let next = tokio::select! {
            next = rest.recv() => next,
            _ = session.as_downstream_mut().read_body_or_idle(true) => {
                session.set_keepalive(None);
                return Ok(());
            }
        };
        match next {
            Some(chunk) => {
                session
                    .write_response_body(Some(Bytes::from(chunk)), false)
                    .await?
            }
            None => return session.write_response_body(None, true).await,
        }
    }
}
