//! The leader asks every gateway replica for its activity, as KEDA's HTTP add-on asks its
//! interceptors: the peers are the ready addresses of the gateway's own Service, and each serves
//! its [`Report`] on [`PATH`](super::activity::PATH). A replica that is not ready yet is not in
//! the list and is not asked; one that does not answer makes every function count as active.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use super::activity::{Fleet, Report, PATH};

/// How long a peer has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// The addresses of the gateway replicas that serve now (this one may be among them).
pub type PeerList = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

/// The other gateway replicas, asked over HTTP.
#[derive(Clone)]
pub struct Peers {
    http: reqwest::Client,
    token: Option<String>,
    list: Option<PeerList>,
}

// === impl Peers ===

impl Peers {
    /// No peers: one gateway (the local runtime).
    pub fn alone() -> Self {
        Peers {
            http: reqwest::Client::new(),
            token: None,
            list: None,
        }
    }

    /// Peers from `list`, asked with the admin `token`.
    pub fn new(list: PeerList, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(ANSWER_WITHIN)
            .connect_timeout(ANSWER_WITHIN)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Peers {
            http,
            token,
            list: Some(list),
        }
    }

    /// The activity of every replica: `local` (this one's) and the answers of the others.
    /// A peer whose report names this replica is this one, reached through the Service.
    pub async fn gather(&self, local: Report) -> Fleet {
        let Some(list) = &self.list else {
            return Fleet::merge([local], Vec::new());
        };
        let asked = join_all(list().into_iter().map(|addr| self.ask(addr))).await;
        let mut reports = vec![];
        let mut unreachable = vec![];
        for r in asked {
            match r {
                Ok(report) if report.replica == local.replica => {}
                Ok(report) => reports.push(report),
                Err(why) => unreachable.push(why),
            }
        }
        reports.push(local);
        Fleet::merge(reports, unreachable)
    }

    async fn ask(&self, addr: SocketAddr) -> Result<Report, String> {
        let mut req = self.http.get(format!("http://{addr}{PATH}"));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| format!("{addr}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{addr}: answered {}", resp.status()));
        }
        resp.json::<Report>()
            .await
            .map_err(|e| format!("{addr}: {e}"))
    }
}
