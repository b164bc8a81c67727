# /// script
# requires-python = ">=3.11"
# dependencies = ["fastapi", "uvicorn"]
# ///
"""NAME: a Poorman FaaS function (FastAPI).

It serves HTTP on $PORT, answers GET /health for the platform, answers every other path and
method with JSON, and logs one line per request (see them with `faas logs NAME -f`).
Deploy it with `faas deploy NAME.py`; call it with `faas invoke NAME /any/path -d 'a body'`.
Entries of a dot file (`faas deploy NAME.py --env-file .env`) become its environment.
"""
import os
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.middleware("http")
async def log_requests(request: Request, call_next):
    started = time.perf_counter()
    response = await call_next(request)
    took = (time.perf_counter() - started) * 1000
    print(f"{request.method} {request.url.path} -> {response.status_code} in {took:.1f} ms", flush=True)
    return response


@app.get("/health", response_class=PlainTextResponse)
def health():
    return "ok"


@app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def handle_any(path: str, request: Request):
    body = (await request.body()).decode("utf-8", "replace")
    return {
        "function": "NAME",
        "method": request.method,
        "path": "/" + path,
        "query": request.url.query,
        "body": body,
    }


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    print(f"NAME listening on port {port}", flush=True)
    uvicorn.run(app, host="0.0.0.0", port=port, access_log=False)
