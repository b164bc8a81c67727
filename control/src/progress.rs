//! Deploy progress: lines a deploy reports as it goes (uv's resolving and installing), for a
//! client that asked to see them (`Accept: application/x-ndjson` on a deploy). The admin API
//! runs the deploy inside [`scope`]; code deep in a runtime calls [`report`], which does
//! nothing when nobody listens, so runtimes need no extra parameter for it.

use std::future::Future;

use tokio::sync::mpsc;

tokio::task_local! {
    static SINK: mpsc::UnboundedSender<String>;
}

/// Runs `f` with its progress reports sent to `sink`.
pub async fn scope<F: Future>(sink: mpsc::UnboundedSender<String>, f: F) -> F::Output {
    SINK.scope(sink, f).await
}

/// Reports one line of progress to whoever listens to the current deploy, if anyone does.
pub fn report(line: impl Into<String>) {
    let _ = SINK.try_with(|sink| sink.send(line.into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_reach_the_scope_and_nothing_else() {
        report("nobody listens");
        let (tx, mut rx) = mpsc::unbounded_channel();
        scope(tx, async { report("resolved 1 package") }).await;
        assert_eq!(rx.recv().await.as_deref(), Some("resolved 1 package"));
        assert!(rx.recv().await.is_none());
    }
}
