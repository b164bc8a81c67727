//! Bad input gets a clear 4xx, and nothing deployed is harmed by it.

mod harness;

use base64::Engine;
use harness::{script, Faas};
use serde_json::{json, Value};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn each_bad_deploy_gets_a_clear_4xx_and_the_deployed_function_keeps_serving() {
    let faas = Faas::start_with(&[("FAAS_MAX_BODY_BYTES", "65536")]).await;
    let tool = script("tests/functions/tool.py");
    assert_eq!(faas.deploy("good", &tool, "", 1).await.0, 200);

    let block = "# /// script\n# requires-python = \">=3.11\"\n# dependencies = []\n# ///\n";
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "not JSON",
            Value::String("{script:".into()),
            400,
            "not the JSON",
        ),
        (
            "bad base64",
            json!({"script": "%%%not base64%%%"}),
            400,
            "script is not valid base64",
        ),
        (
            "bad dot file base64",
            json!({"script": b64(block), "dot_file": "***"}),
            400,
            "dot_file is not valid base64",
        ),
        (
            "no script",
            json!({"option": {"replica": 1}}),
            400,
            "`script` is missing",
        ),
        (
            "no PEP 723 block",
            json!({"script": b64("print(1)\n")}),
            400,
            "no PEP 723 metadata",
        ),
        (
            "two blocks",
            json!({"script": b64(&format!("{block}{block}"))}),
            400,
            "more than one",
        ),
        (
            "unclosed block",
            json!({"script": b64("# /// script\n# dependencies = []\nprint(1)\n")}),
            400,
            "not closed",
        ),
        (
            "bad TOML",
            json!({"script": b64("# /// script\n# dependencies = [\n# ///\n")}),
            400,
            "not valid TOML",
        ),
        (
            "bad specifier",
            json!({"script": b64("# /// script\n# requires-python = \"3.x!\"\n# ///\n")}),
            400,
            "requires-python",
        ),
        (
            "bad name",
            json!({"script": b64(block), "option": {"name": "Bad_Name"}}),
            400,
            "invalid function name",
        ),
        (
            "long name",
            json!({"script": b64(block), "option": {"name": "a".repeat(64)}}),
            400,
            "invalid function name",
        ),
        (
            "unknown option",
            json!({"script": b64(block), "option": {"replicas": 2}}),
            400,
            "unknown field `replicas`",
        ),
        (
            "taken name",
            json!({"script": b64(block), "option": {"name": "good"}}),
            409,
            "already exists",
        ),
        (
            "no interpreter",
            json!({"script": b64("# /// script\n# requires-python = \">=3.99\"\n# dependencies = []\n# ///\n"), "option": {"name": "future"}}),
            422,
            "No interpreter found",
        ),
    ];
    for (what, body, want, needle) in cases {
        let req = match &body {
            Value::String(raw) => faas.request("POST", "/admin/python").body(raw.clone()),
            v => faas.request("POST", "/admin/python").json(v),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{what}: {v}");
        assert_eq!(v["code"], want, "{what}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{what}: message {msg:?} lacks {needle:?}"
        );
    }

    // Too large: 413, told up front from Content-Length.
    let huge = json!({"script": "A".repeat(70_000)});
    let resp = faas
        .request("POST", "/admin/python")
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("FAAS_MAX_BODY_BYTES"),
        "{v}"
    );

    // Unknown functions and routes: 404 JSON.
    for (method, path) in [
        ("GET", "/gateway/nope/"),
        ("GET", "/admin/functions/nope"),
        ("PUT", "/admin/functions/nope"),
        ("DELETE", "/admin/functions/nope"),
        ("POST", "/admin/functions/nope/scale"),
        ("GET", "/elsewhere"),
    ] {
        let resp = faas.request(method, path).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 404, "{method} {path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["code"], 404, "{method} {path}");
    }

    // Bad scale bodies.
    for body in [
        json!({"replicas": -1}),
        json!({"replica": 1}),
        json!({"replicas": 11}),
    ] {
        let (s, v) = faas
            .admin("POST", "/admin/functions/good/scale", Some(body.clone()))
            .await;
        assert_eq!(s, 400, "{body}: {v}");
    }

    // A failed update keeps the old version serving.
    let bad = json!({"script": b64("# /// script\n# requires-python = \">=3.99\"\n# ///\n")});
    assert_eq!(
        faas.admin("PUT", "/admin/functions/good", Some(bad))
            .await
            .0,
        422
    );

    // Through all of it, the deployed function kept serving and nothing else appeared.
    assert_eq!(faas.call("/gateway/good/version").await, (200, "v1".into()));
    let (_, list) = faas.admin("GET", "/admin/functions", None).await;
    assert_eq!(list["functions"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn admin_token_is_required_when_set() {
    let faas = Faas::start_with(&[("FAAS_ADMIN_TOKEN", "s3cret")]).await;
    let tool = b64(&script("tests/functions/tool.py"));
    let body = json!({"script": tool, "option": {"name": "guarded"}});
    let resp = faas
        .http
        .post(faas.url("/admin/python"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("Bearer"), "{v}");
    let resp = faas
        .http
        .get(faas.url("/admin/functions"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = faas
        .http
        .post(faas.url("/admin/python"))
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The gateway itself needs no token.
    assert_eq!(
        faas.call("/gateway/guarded/version").await,
        (200, "v1".into())
    );
}

#[test]
fn bad_configuration_stops_start_up_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_faas"))
        .arg("serve")
        .env("REAPER_POLL_EVERY", "often")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("REAPER_POLL_EVERY"), "{err}");
}

#[tokio::test]
async fn the_admin_api_is_rate_limited_per_client_as_the_original_was() {
    let faas = Faas::start_with(&[("FAAS_ADMIN_RATE_LIMIT", "3")]).await;
    for _ in 0..3 {
        assert_eq!(faas.admin("GET", "/admin/functions", None).await.0, 200);
    }
    let resp = faas.get("/admin/functions").await;
    assert_eq!(resp.status(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "Retry-After: {wait}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], 429);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("FAAS_ADMIN_RATE_LIMIT"),
        "{v}"
    );
    // Only the admin API is limited.
    assert_eq!(faas.call("/health").await.0, 200);
    assert_eq!(faas.call("/gateway/nothing/").await.0, 404);
}
