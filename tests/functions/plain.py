# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""A function written the ordinary way: Python's stdlib ThreadingHTTPServer with its defaults
(a listen backlog of 5, HTTP/1.0: one connection per request), answering its path."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
