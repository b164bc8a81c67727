# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""A single-threaded stdlib server (HTTPServer, not ThreadingHTTPServer): while it serves
`/hang?s=N` it answers nothing else, health probes included. `/pid` names the replica."""
import os
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/hang":
            time.sleep(float(query.partition("=")[2] or "5"))
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
