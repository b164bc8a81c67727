# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""A stdlib test function with one endpoint per behaviour the end-to-end tests check."""
import base64
import hashlib
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("VERSION", "v1")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/health":
            return self.send_text(200, "ok")
        if path.startswith("/env/"):
            return self.send_text(200, os.environ.get(path[5:], ""))
        if path == "/version":
            return self.send_text(200, VERSION)
        if path == "/slow":
            time.sleep(float(query.partition("=")[2] or "1"))
            return self.send_text(200, "slow done")
        if path == "/crash":
            print("crashing on request", flush=True)
            os._exit(3)
        if path == "/events":
            return self.events()
        if path == "/ws":
            return self.websocket()
        if path == "/big":
            n = int(query.partition("=")[2] or "0")
            return self.send_body(200, bytes(i % 251 for i in range(n)), "application/octet-stream")
        self.echo(path, query)

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "11")
        self.end_headers()

    def do_POST(self):
        path, _, query = self.path.partition("?")
        if path == "/digest":
            body = self.read_body()
            return self.send_json({"len": len(body), "sum": sum(body) % 2**32,
                                   "chunked": "Transfer-Encoding" in self.headers})
        self.echo(path, query)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    do_PUT = do_PATCH = do_DELETE = do_POST

    def echo(self, path, query):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.send_json({"method": self.command, "path": path, "query": query, "body": body,
                        "headers": headers, "version": VERSION})

    def events(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(5):
            chunk = f"data: event {i} at {time.time():.3f}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            time.sleep(0.4)
        self.wfile.write(b"0\r\n\r\n")

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        while True:  # echo raw bytes until the peer closes
            data = self.connection.recv(4096)
            if not data:
                break
            self.connection.sendall(data)
        self.close_connection = True

    def send_text(self, code, text):
        self.send_body(code, text.encode(), "text/plain")

    def send_json(self, obj):
        self.send_body(200, json.dumps(obj).encode(), "application/json")

    def send_body(self, code, data, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    # FIXED_PORT imitates scripts written for the original, which ignore $PORT.
    port = int(os.environ.get("FIXED_PORT") or os.environ["PORT"])
    print(f"tool {VERSION} listening on {port}", flush=True)
    sys.stdout.flush()
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
