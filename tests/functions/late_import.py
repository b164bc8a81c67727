# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""Imports a module that its own module code writes first: that import fails in a zygote,
which runs the imports but not the script."""
import os
import sys

HOME = os.environ["HOME"]
with open(os.path.join(HOME, "helper_mod.py"), "w") as f:
    f.write("GREETING = 'written at start'\n")
sys.path.insert(0, HOME)

import helper_mod  # noqa: E402
from http.server import BaseHTTPRequestHandler, HTTPServer  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = helper_mod.GREETING.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
