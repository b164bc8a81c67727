# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""A deliberately hostile function: each endpoint tries one way of taking over the platform or
the machine and reports, as JSON, how far it got. The sandbox test expects every attempt to fail."""
import json
import os
import subprocess
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as e:  # noqa: BLE001 - the point is to report any failure
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def write(path):
    with open(path, "w") as f:
        f.write("pwned")
    return path


def admin(url, token=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def spawn(n):
    procs, error = [], None
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(["sleep", "30"]))
    except Exception as e:  # noqa: BLE001
        error = f"{type(e).__name__}: {e}"
    for p in procs:
        p.kill()
        p.wait()
    return {"started": len(procs), "error": error}


def hog(mb):
    blocks = []
    for _ in range(mb):
        block = bytearray(1 << 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        blocks.append(block)
    return len(blocks)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/health":
            out = "ok"
        elif url.path == "/env":
            out = dict(os.environ)
        elif url.path == "/read":
            out = attempt(lambda: open(q["path"], "rb").read().decode(errors="replace"))
        elif url.path == "/list":
            out = attempt(lambda: sorted(os.listdir(q["path"])))
        elif url.path == "/write":
            out = attempt(lambda: write(q["path"]))
        elif url.path == "/processes":
            out = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        elif url.path == "/admin":
            out = admin(q["url"], os.environ.get("FAAS_ADMIN_TOKEN"))
        elif url.path == "/spawn":
            out = spawn(int(q["n"]))
        elif url.path == "/hog":
            out = hog(int(q["mb"]))
        else:
            out = {"cwd": os.getcwd(), "uid": os.getuid()}
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
