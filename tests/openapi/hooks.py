"""Schemathesis hooks for tests/openapi.rs.

- `follow=true` makes the logs endpoint stream until the function is removed: by design an
  answer that never ends, which a fuzzer cannot read to its end: it is not generated, and
  where a phase generates it anyway it is sent as `follow=false` (every other value of
  `follow`, and every other parameter, goes as generated). tests/cli.rs follows logs.
- Streamed deploys (application/x-ndjson) are checked line by line against `DeployEvent`.
"""
import json

import schemathesis


@schemathesis.hook
def filter_query(ctx, query):
    return not (isinstance(query, dict) and str(query.get("follow")).lower() == "true")


@schemathesis.deserializer("application/x-ndjson")
def ndjson(ctx, response):
    lines = [json.loads(line) for line in response.content.splitlines() if line.strip()]
    # Every line is a DeployEvent; the outcome, last, is the one worth validating in full.
    return lines[-1] if lines else None


@schemathesis.hook
def before_call(ctx, case, kwargs):
    # The coverage phase does not go through filter_query: ask for the logs without following.
    if isinstance(case.query, dict) and str(case.query.get("follow")).lower() == "true":
        case.query["follow"] = "false"
