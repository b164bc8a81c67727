# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""NAME: a Poorman FaaS function (standard library only).

It serves HTTP on $PORT, answers GET /health for the platform, answers every other path and
method with JSON, and logs one line per request (see them with `faas logs NAME -f`).
Deploy it with `faas deploy NAME.py`; call it with `faas invoke NAME /any/path -d 'a body'`.
Entries of a dot file (`faas deploy NAME.py --env-file .env`) become its environment.
"""
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        started = time.perf_counter()
        if self.path == "/health":
            status = self.send(200, b"ok", "text/plain")
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            path, _, query = self.path.partition("?")
            reply = {
                "function": "NAME",
                "method": self.command,
                "path": path,
                "query": query,
                "body": body,
            }
            status = self.send(200, json.dumps(reply).encode() + b"\n", "application/json")
        took = (time.perf_counter() - started) * 1000
        # One line per request; flush, since output goes to a pipe, not a terminal.
        print(f"{self.command} {self.path} -> {status} in {took:.1f} ms", flush=True)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    def send(self, status, data, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return status

    def log_message(self, fmt, *args):
        pass  # handle_any logs instead


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    print(f"NAME listening on port {port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
