//! `faas deploy`: checks the script's PEP 723 block here first (with the server's own parser),
//! uploads it, prints uv's progress as the server streams it, and ends with the URL.

use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use clap::Args;
use control::function::{parse_dot_file, validate_name, DeployRequest, Options};
use control::replies::{DeployEvent, DeployReply};
use reqwest::{Method, Response, StatusCode};

use super::client::Client;
use super::output::Out;
use super::Failure;

/// `faas deploy FILE.py [options]`.
#[derive(Args)]
pub struct DeployArgs {
    /// The script: Python with a PEP 723 `# /// script` block.
    pub file: PathBuf,
    /// The function's name (default: the file's name without `.py`).
    #[arg(long)]
    pub name: Option<String>,
    /// A dotenv file whose entries become the function's environment.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Replicas to start with.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Replicas it never goes below (0 lets it scale to zero when idle).
    #[arg(long)]
    pub min: Option<u32>,
    /// Replicas the autoscaler never goes above.
    #[arg(long)]
    pub max: Option<u32>,
    /// Idle time before it is scaled to zero (`10m`, `1h30m`, or seconds).
    #[arg(long)]
    pub idle_timeout: Option<String>,
    /// In-flight requests per replica the autoscaler aims at.
    #[arg(long)]
    pub target_concurrency: Option<u32>,
    /// Requests one replica serves at once.
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// Refuse to update a function that exists.
    #[arg(long)]
    pub create_only: bool,
}

/// Deploys, or updates the function of that name.
pub async fn run(client: &Client, out: &Out, args: DeployArgs) -> Result<(), Failure> {
    let (name, body) = prepare(&args)?;
    let started = Instant::now();
    let created = client
        .send(
            client
                .admin(Method::POST, "/admin/python")
                .header("Accept", control::admin::NDJSON)
                .json(&body),
        )
        .await?;
    let (verb, resp) = if created.status() == StatusCode::CONFLICT && !args.create_only {
        out.note(&format!("{name} exists: updating it"));
        let path = format!("/admin/functions/{name}");
        let req = client
            .admin(Method::PUT, &path)
            .header("Accept", control::admin::NDJSON)
            .json(&body);
        ("updated", client.send(req).await?)
    } else {
        ("deployed", created)
    };
    if !resp.status().is_success() {
        return Err(client.refusal(resp).await);
    }
    let reply = follow(client, out, resp).await?;
    if reply.code != 200 {
        return Err(Failure(format!(
            "{} (HTTP {})",
            reply.message.trim_end(),
            reply.code
        )));
    }
    if out.json {
        out.json_value(&serde_json::to_value(&reply).unwrap_or_default());
    } else {
        out.done(&format!(
            "{verb} {name} in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        out.line(&reply.url);
    }
    Ok(())
}

/// Reads the script and dot file and checks them as the server will; the name and the body.
fn prepare(args: &DeployArgs) -> Result<(String, DeployRequest), Failure> {
    let file = &args.file;
    let script = std::fs::read_to_string(file)
        .map_err(|e| Failure(format!("cannot read {}: {e}", file.display())))?;
    control::pep723::parse(&script).map_err(|e| Failure(format!("{}: {e}", file.display())))?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => name_from_file(file),
    };
    validate_name(&name).map_err(|e| {
        let hint = if args.name.is_none() {
            " (choose one with --name)"
        } else {
            ""
        };
        Failure(format!("{e}{hint}"))
    })?;
    let dot_file = match &args.env_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?;
            parse_dot_file(&text).map_err(|e| Failure(format!("{}: {e}", path.display())))?;
            Some(b64(&text))
        }
        None => None,
    };
    let option = Options {
        name: Some(name.clone()),
        user: std::env::var("USER").ok().filter(|u| !u.is_empty()),
        replica: args.replicas,
        min_replicas: args.min,
        max_replicas: args.max,
        target_concurrency: args.target_concurrency,
        max_concurrency: args.max_concurrency,
        idle_timeout: args.idle_timeout.clone().map(serde_json::Value::String),
        ..Options::default()
    };
    let body = DeployRequest {
        script: Some(b64(&script)),
        dot_file,
        option,
    };
    Ok((name, body))
}

/// Prints the progress lines of a streamed deploy as they come; the outcome.
async fn follow(client: &Client, out: &Out, mut resp: Response) -> Result<DeployReply, Failure> {
    let streamed = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(control::admin::NDJSON));
    if !streamed {
        // An older gateway: the plain answer.
        return resp
            .json()
            .await
            .map_err(|e| Failure(format!("the gateway's answer is not what we expect: {e}")));
    }
    let mut pending = Vec::new();
    let mut outcome = None;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(client.unreachable(&e)),
        };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<DeployEvent>(&line) {
                Ok(DeployEvent::Progress { progress }) => out.note(&format!("  {progress}")),
                Ok(DeployEvent::Done(reply)) => outcome = Some(reply),
                Err(_) => {}
            }
        }
    }
    outcome.ok_or_else(|| Failure("the gateway ended the deploy without its outcome".into()))
}

/// `hello.py` → `hello`; `My_Func.py` → `my-func`.
fn name_from_file(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = if stem == "main" {
        // examples/hello/main.py: the directory names it.
        file.canonicalize()
            .ok()
            .and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|d| d.to_string_lossy().into_owned())
            })
            .unwrap_or(stem)
    } else {
        stem
    };
    stem.to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_files() {
        assert_eq!(name_from_file(Path::new("hello.py")), "hello");
        assert_eq!(name_from_file(Path::new("dir/My_Func.py")), "my-func");
    }
}
