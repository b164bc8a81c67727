# The zygote of one function version (see zygote.rs). Started as `python -c <this> <script>`
# with the function's interpreter and environment, in the function's sandbox, with its control
# socket (SOCK_SEQPACKET, one JSON message per packet) as file descriptor 3. It imports the
# script's top-level imports (found from its syntax tree; the script itself does not run here),
# warms what libraries do lazily on a first request, collects and freezes the heap, says
# `ready`, and then forks one replica per `fork` request; each child runs the script as
# `__main__`. Everything it sends is checked by faas: it runs the function's imports, which are
# the function's code.
import ast
import builtins
import ctypes
import gc
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
import types

CONTROL_FD = 3
SCRIPT = sys.argv[1]
LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
# What libraries load lazily on their first request or at server start, imported here when the
# library itself is imported by the script. Each one is optional.
WARM = {
    "uvicorn": [
        "uvicorn.config", "uvicorn.server", "uvicorn.main", "uvicorn.importer",
        "uvicorn.lifespan.on", "uvicorn.lifespan.off", "uvicorn.loops.auto",
        "uvicorn.loops.asyncio", "uvicorn.loops.uvloop", "uvicorn.protocols.http.auto",
        "uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl",
        "uvicorn.protocols.websockets.auto", "uvicorn.protocols.websockets.websockets_impl",
        "uvicorn.protocols.websockets.wsproto_impl", "uvicorn.middleware.proxy_headers",
        "uvicorn.logging", "logging.config", "h11", "httptools",
    ],
    "anyio": ["anyio._backends._asyncio", "anyio.streams.memory", "anyio.from_thread"],
    "starlette": [
        "starlette.middleware.errors", "starlette.middleware.exceptions",
        "starlette.responses", "starlette.requests", "starlette.routing", "multipart",
        "python_multipart",
    ],
    "fastapi": [
        "fastapi.routing", "fastapi.encoders", "fastapi.openapi.utils", "fastapi.openapi.docs",
        "fastapi.dependencies.utils", "fastapi.exception_handlers",
    ],
    "http.server": ["email.parser", "email.feedparser", "http.client", "socketserver", "mimetypes"],
    "asyncio": ["asyncio.base_events", "asyncio.selector_events", "asyncio.unix_events"],
    "flask": ["werkzeug.serving", "werkzeug.routing", "jinja2"],
}


def send(sock, msg, fds=()):
    """One message; with our credentials, so that faas learns our pid in its namespace."""
    creds = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
    anc = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)]
    if fds:
        anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds)))
    sock.sendmsg([json.dumps(msg).encode()], anc)


def imports_of(tree):
    """(module, names, required) of the import statements the module body runs: directly
    (required) or inside a top-level `if`/`try`/`with` (optional)."""
    out = []

    def visit(body, required):
        for s in body:
            if isinstance(s, ast.Import):
                out.extend((a.name, (), required) for a in s.names)
            elif isinstance(s, ast.ImportFrom):
                if s.level == 0 and s.module and s.module != "__future__":
                    names = tuple(a.name for a in s.names if a.name != "*")
                    out.append((s.module, names, required))
            elif isinstance(s, (ast.If, ast.With, ast.For, ast.While)):
                visit(s.body, False)
                visit(getattr(s, "orelse", []), False)
            elif isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
                visit(s.body, False)
                for h in s.handlers:
                    visit(h.body, False)
                visit(s.orelse, False)
                visit(s.finalbody, False)

    visit(tree.body, True)
    return out


def import_all(imports):
    """Imports them; the first required one that fails is fatal (the zygote path is off)."""
    for module, names, required in imports:
        try:
            m = importlib.import_module(module)
            for n in names:
                if not hasattr(m, n):
                    try:
                        importlib.import_module(f"{module}.{n}")
                    except Exception:
                        pass
        except BaseException as e:
            if required:
                raise RuntimeError(f"import of {module!r} failed: {type(e).__name__}: {e}")


def warm():
    for lib, mods in WARM.items():
        if lib in sys.modules:
            for m in mods:
                try:
                    importlib.import_module(m)
                except BaseException:
                    pass


def threads():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def join_threads(timeout):
    """Joins threads started by imports; returns the names of those still alive."""
    th = sys.modules.get("threading")
    if th is None:
        return [] if threads() == 1 else [f"{threads() - 1} native thread(s)"]
    deadline = time.monotonic() + timeout
    for t in th.enumerate():
        if t is not th.main_thread():
            t.join(max(0.0, deadline - time.monotonic()))
    while threads() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    if threads() == 1:
        return []
    alive = [t.name for t in th.enumerate() if t is not th.main_thread()]
    return alive or [f"{threads() - 1} native thread(s)"]


def rss_kib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(req, code, chan, logw, ctl, wake):
    """In the forked child: become a replica, then run the script as `__main__`."""
    zygote = os.getppid()
    os.setsid()
    # Die with the zygote (faas kills the zygote's whole sandbox, or the zygote itself).
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote:
        os._exit(1)
    signal.set_wakeup_fd(-1)
    for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (ctl, *wake):
        s.close()
    os.dup2(logw, 1)
    os.dup2(logw, 2)
    os.close(logw)
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    # faas learns our pid from this (and moves us into our own cgroup).
    send(chan, {"op": "hello"})
    real_listen = socket.socket.listen

    def listen(self, *args):
        real_listen(self, *args)
        if self.family in (socket.AF_INET, socket.AF_INET6) and socket.socket.listen is listen:
            socket.socket.listen = real_listen
            try:
                send(chan, {"op": "listen", "port": self.getsockname()[1]})
            except OSError:
                pass
            chan.close()

    socket.socket.listen = listen
    # An event loop of the zygote's imports is not this process's.
    aio = sys.modules.get("asyncio")
    if aio is not None:
        aio.events._set_running_loop(None)
        aio.set_event_loop_policy(None)
    # As `python script.py` runs it: a fresh `__main__` (the script compiled once, in the zygote).
    main = types.ModuleType("__main__")
    main.__file__ = SCRIPT
    main.__builtins__ = builtins
    main.__cached__ = None
    sys.modules["__main__"] = main
    sys.argv = [SCRIPT]
    exec(code, main.__dict__)
    sys.exit(0)


def fork(req, code, fds, ctl, wake, children):
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        send(ctl, {"op": "refused", "id": req.get("id"), "why": "bad fork request"})
        return
    chan_fd, logw = fds
    n = threads()
    if n > 1:
        alive = join_threads(0.2)
        if alive:
            os.close(chan_fd)
            os.close(logw)
            send(ctl, {"op": "refused", "id": req["id"],
                       "why": f"threads are alive in the zygote: {', '.join(alive)}"})
            return
    os.set_inheritable(chan_fd, False)
    chan = socket.socket(fileno=chan_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            child(req, code, chan, logw, ctl, wake)
        except SystemExit:
            raise
        except BaseException:
            traceback.print_exc()
            sys.exit(1)
    chan.close()
    os.close(logw)
    children[pid] = req["id"]
    send(ctl, {"op": "forked", "id": req["id"]})


def reap(ctl, children):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        rid = children.pop(pid, None)
        if rid is not None:
            send(ctl, {"op": "exit", "id": rid, "status": status})


def main():
    ctl = socket.socket(fileno=CONTROL_FD)
    sys.path[0] = os.path.dirname(os.path.abspath(SCRIPT))
    sys.argv = [SCRIPT]
    started = time.monotonic()
    try:
        with open(SCRIPT, "rb") as f:
            tree = ast.parse(f.read(), SCRIPT)
        code = compile(tree, SCRIPT, "exec")
        import_all(imports_of(tree))
        warm()
        alive = join_threads(1.0)
        if alive:
            raise RuntimeError(f"imports leave threads running: {', '.join(alive)}")
        aio = sys.modules.get("asyncio")
        if aio is not None:
            aio.events._set_running_loop(None)
    except BaseException as e:
        send(ctl, {"op": "failed", "why": str(e) or type(e).__name__})
        sys.exit(1)
    gc.collect()
    gc.freeze()
    wake = socket.socketpair()
    for s in wake:
        s.setblocking(False)
    signal.set_wakeup_fd(wake[1].fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children = {}
    send(ctl, {"op": "ready", "modules": len(sys.modules), "rss_kib": rss_kib(),
               "ms": round((time.monotonic() - started) * 1000)})
    while True:
        ready, _, _ = select.select([ctl, wake[0]], [], [])
        if wake[0] in ready:
            try:
                while wake[0].recv(512):
                    pass
            except BlockingIOError:
                pass
            reap(ctl, children)
        if ctl in ready:
            msg, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 4)
            if not msg:
                return  # faas is gone
            req = json.loads(msg)
            if req.get("op") == "fork":
                fork(req, code, fds, ctl, wake, children)
            else:
                for fd in fds:
                    os.close(fd)


main()
