# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""Draws a number before and after seeding `random` at module level, and one per request."""
import json
import os
import random
from http.server import BaseHTTPRequestHandler, HTTPServer

UNSEEDED = random.random()
random.seed(42)
SEEDED = random.random()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"unseeded": UNSEEDED, "seeded": SEEDED, "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
