# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""A stdlib-only function: answers with its path, query, body and a greeting from its dot file."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        if self.path == "/health":
            return self._send(200, b"ok", "text/plain")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        path, _, query = self.path.partition("?")
        reply = {
            "message": f"hello from {os.environ.get('GREETING', 'Poorman FaaS')}",
            "method": self.command,
            "path": path,
            "query": query,
            "body": body,
            "forwarded_prefix": self.headers.get("X-Forwarded-Prefix"),
        }
        self._send(200, json.dumps(reply).encode(), "application/json")

    def _send(self, code, data, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    print(f"hello listening on {port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
