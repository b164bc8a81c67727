//! The client subcommands other than `deploy` and `new`.

use std::io::{BufRead, Write};
use std::time::Instant;

use clap::Args;
use control::replies::{FunctionList, FunctionStatus};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;

use super::client::Client;
use super::output::{ago, table, Out};
use super::Failure;

/// `faas invoke NAME [PATH] [options]`.
#[derive(Args)]
pub struct InvokeArgs {
    /// The function.
    pub name: String,
    /// The path under the function (default `/`), with a query string if wanted.
    #[arg(default_value = "/")]
    pub path: String,
    /// The request body; `@FILE` reads it from a file, `@-` from stdin. Makes the method POST.
    #[arg(short, long)]
    pub data: Option<String>,
    /// The method (default GET, or POST with a body).
    #[arg(short = 'X', long)]
    pub method: Option<String>,
    /// A request header, `'Name: value'`; may be repeated.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Print the status, headers and timing on stderr.
    #[arg(short, long)]
    pub verbose: bool,
}

/// `faas ls`.
pub async fn ls(client: &Client, out: &Out) -> Result<(), Failure> {
    let req = client.admin(Method::GET, "/admin/functions");
    if out.json {
        let v: serde_json::Value = client.json(req).await?;
        out.json_value(&v);
        return Ok(());
    }
    let list: FunctionList = client.json(req).await?;
    if list.functions.is_empty() {
        out.note("no functions yet: `faas new hello` and `faas deploy hello.py` make one");
        return Ok(());
    }
    let now = control::now_ms();
    let rows: Vec<Vec<String>> = list
        .functions
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                format!("{}/{}", f.ready_replicas, f.replicas),
                f.inflight.to_string(),
                ago(f.last_activity_ms, now),
                f.url.clone(),
            ]
        })
        .collect();
    let mut lines = table(
        &["NAME", "READY", "IN FLIGHT", "LAST ACTIVITY", "URL"],
        &rows,
    );
    lines[0] = out.bold(&lines[0]);
    for l in lines {
        out.line(&l);
    }
    Ok(())
}

/// `faas get NAME`.
pub async fn get(client: &Client, out: &Out, name: &str) -> Result<(), Failure> {
    let req = client.admin(Method::GET, &function_path(name));
    if out.json {
        let v: serde_json::Value = client.json(req).await?;
        out.json_value(&v);
        return Ok(());
    }
    let f: FunctionStatus = client.json(req).await?;
    let opt = |v: Option<u32>| v.map_or("-".to_string(), |n| n.to_string());
    let rows = [
        ("name", f.name.clone()),
        ("url", f.url.clone()),
        (
            "replicas",
            format!(
                "{} ready of {} wanted (min {}, max {})",
                f.ready_replicas, f.replicas, f.min_replicas, f.max_replicas
            ),
        ),
        ("in flight", format!("{} ({} held)", f.inflight, f.pending)),
        (
            "last activity",
            format!(
                "{} ({})",
                ago(f.last_activity_ms, control::now_ms()),
                f.last_activity
            ),
        ),
        ("idle timeout", format!("{} s", f.idle_timeout_seconds)),
        ("target concurrency", opt(f.target_concurrency)),
        ("max concurrency", opt(f.max_concurrency)),
        (
            "requires-python",
            f.requires_python.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "dependencies",
            if f.dependencies.is_empty() {
                "none".into()
            } else {
                f.dependencies.join(", ")
            },
        ),
        ("version", f.version.to_string()),
        ("created", f.created_at.clone()),
        ("updated", f.updated_at.clone()),
    ];
    for (k, v) in rows {
        out.line(&format!("{:<20}{v}", out.bold(&format!("{k}:")) + " "));
    }
    Ok(())
}

/// `faas rm NAME`: asks first on a terminal unless `--yes`.
pub async fn rm(client: &Client, out: &Out, name: &str, yes: bool) -> Result<(), Failure> {
    if !yes && out.interactive() && !confirm(&format!("remove function {name}?")) {
        return Err(Failure("not removed".into()));
    }
    client
        .call(client.admin(Method::DELETE, &function_path(name)))
        .await?;
    if out.json {
        out.json_value(&serde_json::json!({"name": name, "removed": true}));
    } else {
        out.done(&format!("removed {name}"));
    }
    Ok(())
}

/// `faas scale NAME N`.
pub async fn scale(client: &Client, out: &Out, name: &str, replicas: u32) -> Result<(), Failure> {
    let req = client
        .admin(Method::POST, &format!("{}/scale", function_path(name)))
        .json(&control::admin::ScaleBody { replicas });
    let v: serde_json::Value = client.json(req).await?;
    if out.json {
        out.json_value(&v);
        return Ok(());
    }
    out.done(&format!(
        "{name}: {replicas} replica(s) wanted, {} ready now",
        v["ready_replicas"]
    ));
    Ok(())
}

/// `faas logs NAME [--tail N] [-f]`.
pub async fn logs(
    client: &Client,
    out: &Out,
    name: &str,
    tail: usize,
    follow: bool,
) -> Result<(), Failure> {
    let path = format!("{}/logs?tail={tail}&follow={follow}", function_path(name));
    let mut resp = client.call(client.admin(Method::GET, &path)).await?;
    let mut stdout = std::io::stdout();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if stdout
                    .write_all(&chunk)
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return Ok(()); // stdout closed (`| head`)
                }
            }
            Ok(None) => break,
            Err(e) => return Err(client.unreachable(&e)),
        }
    }
    if follow {
        out.note(&format!("{name} was removed"));
    }
    Ok(())
}

/// `faas invoke NAME [PATH]`: the function's answer on stdout; a status of 400 or more fails.
pub async fn invoke(client: &Client, out: &Out, args: InvokeArgs) -> Result<(), Failure> {
    control::function::validate_name(&args.name)?;
    let body = match args.data.as_deref() {
        None => None,
        Some("@-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            Some(buf)
        }
        Some(d) if d.starts_with('@') => Some(
            std::fs::read(&d[1..]).map_err(|e| Failure(format!("cannot read {}: {e}", &d[1..])))?,
        ),
        Some(d) => Some(d.as_bytes().to_vec()),
    };
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| Failure(format!("{m:?} is not an HTTP method")))?,
        None if body.is_some() => Method::POST,
        None => Method::GET,
    };
    let prefix = std::env::var("GATEWAY_PATH_PREFIX").unwrap_or_else(|_| "/gateway".into());
    let sub = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let mut req = client.plain(method.clone(), &format!("{prefix}/{}{sub}", args.name));
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| Failure(format!("header {h:?} is not 'Name: value'")))?;
        let k = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| Failure(format!("{:?} is not a header name", k.trim())))?;
        let v = HeaderValue::from_str(v.trim())
            .map_err(|_| Failure(format!("{:?} is not a header value", v.trim())))?;
        req = req.header(k, v);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let started = Instant::now();
    let mut resp = client.send(req).await?;
    let status = resp.status();
    if args.verbose {
        out.note(&format!("{method} {} -> {status}", resp.url()));
        for (k, v) in resp.headers() {
            out.note(&format!("< {k}: {}", v.to_str().unwrap_or("<binary>")));
        }
    }
    let mut stdout = std::io::stdout();
    let mut last = b'\n';
    while let Some(chunk) = resp.chunk().await.map_err(|e| client.unreachable(&e))? {
        last = chunk.last().copied().unwrap_or(last);
        if stdout
            .write_all(&chunk)
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    // On a terminal, the prompt starts on a line of its own (as with httpie).
    if last != b'\n' && std::io::IsTerminal::is_terminal(&stdout) {
        let _ = writeln!(stdout);
    }
    if args.verbose {
        out.note(&format!(
            "{} in {:.1} ms",
            status.as_u16(),
            started.elapsed().as_secs_f64() * 1000.0
        ));
    }
    if status.as_u16() >= 400 {
        return Err(Failure(format!("{} answered {status}", args.name)));
    }
    Ok(())
}

/// `/admin/functions/NAME`, the name checked so that it cannot change the path.
fn function_path(name: &str) -> String {
    let safe: String = name
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/admin/functions/{safe}")
}

/// Asks a yes/no question on the terminal.
fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}
