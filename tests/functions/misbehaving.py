# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""A deliberately misbehaving function: it speaks raw bytes, and each path answers with one
hostile or malformed HTTP/1.1 response. `/echo` answers the request head it received."""
import os
import socketserver

CANNED = {
    "/space-colon": b"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "/fold": b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\nContent-Length: 2\r\n\r\nok",
    "/bare-lf": b"HTTP/1.1 200 OK\nX-Bare: 1\nContent-Length: 2\n\nok",
    "/chunk-bare-lf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
    "/last-chunk-bare-lf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\n",
    "/cl-plus": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    "/cl-nbsp": b"HTTP/1.1 200 OK\r\nContent-Length: 2\xc2\xa0\r\n\r\nok",
    "/te-and-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "/hop": b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\nok",
    # A response followed by a forged one: a client must never get the forgery.
    "/smuggle": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
}


DROPPED = {"n": 0}


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = self.request.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            if path == "/truncated":
                # A head promising 10 bytes, 2 of them, then the connection closes.
                self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok")
                return
            if path == "/drop":
                # Read the request, then close without a byte of answer.
                DROPPED["n"] += 1
                return
            if path == "/dropped":
                body = str(DROPPED["n"]).encode()
                out = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                self.request.sendall(out)
                continue
            if path == "/echo":
                body = head + b"\r\n\r\n"
                out = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            elif path == "/health":
                out = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            else:
                out = CANNED.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            self.request.sendall(out)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
