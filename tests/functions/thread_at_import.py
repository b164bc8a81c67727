# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""Starts a thread at import time (a background ticker) and serves what it counted."""
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

TICKS = [0]


def tick():
    while True:
        TICKS[0] += 1
        time.sleep(0.01)


threading.Thread(target=tick, name="ticker", daemon=True).start()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.05)
        body = json.dumps({"ticks": TICKS[0], "threads": threading.active_count()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
