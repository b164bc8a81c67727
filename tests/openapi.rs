//! The admin API against its own OpenAPI document: the document validates as OpenAPI 3.1
//! (openapi-spec-validator), and Schemathesis, generating requests from it for every operation,
//! finds no 5xx, no response outside its documented status and schema, no invalid input
//! accepted, and leaves `faas` healthy.

mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{repo, tool, Faas};

/// Generated cases per operation and phase: the whole run stays well under three minutes.
const CASES: &str = "100";

#[tokio::test]
async fn the_admin_api_keeps_its_openapi_contract() {
    let faas = Faas::start_with(&[("FAAS_DEPLOY_TIMEOUT", "20s")]).await;
    let resp = faas.get("/admin/openapi.json").await;
    assert_eq!(resp.status(), 200);
    let doc = resp.text().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let doc_path = tmp.path().join("openapi.json");
    std::fs::write(&doc_path, &doc).unwrap();

    // A validator from PyPI: the document is OpenAPI 3.1.
    let check = Command::new(tool("python"))
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             doc = json.load(open(sys.argv[1]))\n\
             validate(doc)\n\
             print(doc['openapi'])",
        ])
        .arg(&doc_path)
        .output()
        .expect("running .venv/bin/python (./dev setup installs openapi-spec-validator)");
    assert!(
        check.status.success(),
        "the document does not validate:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "3.1.0");

    // A function to aim at, so that the operations on one get past 404.
    let script = std::fs::read_to_string(repo().join("proxy/src/cli/templates/stdlib.py"))
        .unwrap()
        .replace("NAME", "fuzzed");
    let (status, reply) = faas.deploy("fuzzed", &script, "", 1).await;
    assert_eq!(status, 200, "{reply}");

    let token = faas.token.clone().expect("a token");
    let started = Instant::now();
    let mut child = Command::new(tool("schemathesis"))
        .arg("run")
        .arg(&doc_path)
        .args(["--url", &faas.url("")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", CASES])
        .args(["--checks", "all"])
        // A request valid by the schema may still be refused: the schema cannot say that a
        // base64 string is a Python script with a valid PEP 723 block.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--request-timeout", "30", "--workers", "1", "--seed", "1"])
        .args(["--generation-database", "none", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", repo().join("tests/openapi/hooks.py"))
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running .venv/bin/schemathesis (./dev setup installs it)");
    // Bounded: a run that hangs is a failure, not a stuck test.
    let deadline = started + Duration::from_secs(170);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "schemathesis ran {:.0} s:\n{}",
        started.elapsed().as_secs_f64(),
        report
            .lines()
            .skip_while(|l| !l.contains("SUMMARY"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        status.is_some(),
        "schemathesis did not finish in 170 s:\n{report}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "schemathesis found failures:\n{report}\nfaas log:\n{}",
        faas.log_text()
    );

    // What it sent, by operation and status (the admin API's own metric).
    let metrics = faas.get("/metrics").await.text().await.unwrap();
    for line in metrics.lines() {
        if line.starts_with("faas_admin_requests_total{") {
            eprintln!("{line}");
        }
    }

    // Still healthy: alive, answering, and the function it was aimed at still serves.
    assert_eq!(faas.call("/health").await, (200, "ok".to_string()));
    let (status, _) = faas.admin("GET", "/admin/functions", None).await;
    assert_eq!(status, 200);
    assert!(
        !faas.log_text().contains("panicked"),
        "faas panicked:\n{}",
        faas.log_text()
    );
}
