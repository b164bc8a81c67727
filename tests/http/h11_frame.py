"""Where does each HTTP/1.1 message end, according to h11 (an independent parser)?

Reads a JSON list of {"kind": "request"|"response", "data": base64, "head_method": bool} on
stdin; prints a JSON list of {"ok": bool, "end": int|null, "error": str|null}: the offset just
after the first message (head and body) or why h11 refuses it."""
import base64
import json
import sys

import h11


def request_end(data: bytes):
    conn = h11.Connection(our_role=h11.SERVER)
    conn.receive_data(data)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return None, "incomplete"
        if isinstance(event, h11.EndOfMessage):
            trailing, _closed = conn.trailing_data
            return len(data) - len(trailing), None


def response_end(data: bytes, head_method: bool):
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method="HEAD" if head_method else "GET", target="/", headers=[("Host", "f")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    eof_sent = False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if eof_sent:
                return None, "incomplete"
            conn.receive_data(b"")  # the function closes its connection
            eof_sent = True
            continue
        if isinstance(event, h11.EndOfMessage):
            trailing, _closed = conn.trailing_data
            return len(data) - len(trailing), None


def main():
    out = []
    for case in json.load(sys.stdin):
        data = base64.b64decode(case["data"])
        try:
            if case["kind"] == "request":
                end, err = request_end(data)
            else:
                end, err = response_end(data, case.get("head_method", False))
        except h11.RemoteProtocolError as e:
            end, err = None, str(e)
        out.append({"ok": end is not None, "end": end, "error": err})
    json.dump(out, sys.stdout)


main()
