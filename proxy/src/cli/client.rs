//! The admin API's client: where the gateway is, which token to send, and errors as one line
//! a person can act on.

use std::path::PathBuf;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use super::Failure;

/// A client of one gateway.
pub struct Client {
    /// `http://host:port`, without a trailing `/`.
    pub base: String,
    http: reqwest::Client,
    token: Option<String>,
    /// Where the token came from, to say so when it is refused.
    token_source: String,
}

impl Client {
    /// A client of `gateway`, with the token of `FAAS_ADMIN_TOKEN`, or for a gateway on this
    /// machine the one `faas serve` generated into its state directory.
    pub fn new(gateway: &str) -> Result<Self, Failure> {
        let base = gateway.trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base).map_err(|e| {
            Failure(format!(
                "--gateway / FAAS_GATEWAY {base:?} is not a URL such as http://127.0.0.1:8080: {e}"
            ))
        })?;
        if url.scheme() != "http" {
            return Err(Failure(format!(
                "--gateway / FAAS_GATEWAY {base:?}: only http:// gateways are supported"
            )));
        }
        let (token, token_source) = match std::env::var("FAAS_ADMIN_TOKEN") {
            Ok(t) if !t.trim().is_empty() => {
                (Some(t.trim().to_string()), "FAAS_ADMIN_TOKEN".into())
            }
            _ => match is_loopback(&url).then(local_token_file).flatten() {
                Some(file) => match std::fs::read_to_string(&file) {
                    Ok(t) if !t.trim().is_empty() => {
                        (Some(t.trim().to_string()), file.display().to_string())
                    }
                    _ => (None, String::new()),
                },
                None => (None, String::new()),
            },
        };
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| Failure(format!("starting the HTTP client: {e}")))?;
        Ok(Client {
            base,
            http,
            token,
            token_source,
        })
    }

    /// A request to an admin path, with the token.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// A request to any path of the gateway, without the token.
    pub fn plain(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends a request; a gateway that cannot be reached is one line.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, Failure> {
        req.send().await.map_err(|e| self.unreachable(&e))
    }

    /// Sends an admin request and fails with the server's message unless it succeeds.
    pub async fn call(&self, req: RequestBuilder) -> Result<Response, Failure> {
        let resp = self.send(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.refusal(resp).await)
    }

    /// Sends an admin request and parses its JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, Failure> {
        let resp = self.call(req).await?;
        resp.json()
            .await
            .map_err(|e| Failure(format!("the gateway's answer is not what we expect: {e}")))
    }

    /// The failure of an answer that is not a success: the server's message, and what to do
    /// about a refused token.
    pub async fn refusal(&self, resp: Response) -> Failure {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string());
        let hint = match status {
            StatusCode::UNAUTHORIZED if self.token.is_none() => format!(
                "; set FAAS_ADMIN_TOKEN (on the gateway's machine: {})",
                local_token_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "FAAS_STATE_DIR/admin-token".into())
            ),
            StatusCode::UNAUTHORIZED => format!(" (the token from {})", self.token_source),
            _ => String::new(),
        };
        Failure(format!("{message} (HTTP {}){hint}", status.as_u16()))
    }

    /// One line for a request that did not get an answer.
    pub fn unreachable(&self, e: &reqwest::Error) -> Failure {
        if e.is_connect() {
            return Failure(format!(
                "no gateway answers at {}: is `faas serve` (./dev run) running? \
                 (--gateway / FAAS_GATEWAY choose another)",
                self.base
            ));
        }
        if e.is_timeout() {
            return Failure(format!(
                "the gateway at {} did not answer in time",
                self.base
            ));
        }
        let mut msg = format!("talking to the gateway at {}: {e}", self.base);
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
        Failure(msg)
    }
}

/// Whether the gateway is on this machine (so that its generated token may be sent to it).
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => host == "localhost",
    }
}

/// The token file of `faas serve` on this machine, found as the server finds its state
/// directory (`FAAS_STATE_DIR`, else `XDG_STATE_HOME` or `~/.local/state`).
fn local_token_file() -> Option<PathBuf> {
    let dir = match std::env::var_os("FAAS_STATE_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => control::config::default_state_dir(),
    };
    Some(control::token::token_path(&dir))
}
