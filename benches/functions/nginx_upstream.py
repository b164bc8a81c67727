# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""A "function" that is nginx serving a fixed small response on $UPSTREAM_PORT: a fast upstream
that the load benchmark deploys, so that the gateway routes /gateway/<name>/ to the very server
the other proxies point at. It ignores $PORT; the local runtime finds the port it listens on."""
import os
import tempfile

port = os.environ["UPSTREAM_PORT"]
d = tempfile.mkdtemp(prefix="faas-bench-nginx-")
temp_paths = "".join(f"{k}_temp_path {d}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
conf = f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
daemon off;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    {temp_paths}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "hello from the upstream\\n"; }}
    }}
}}
"""
with open(f"{d}/nginx.conf", "w") as f:
    f.write(conf)
nginx = os.environ.get("NGINX_BIN", "nginx")
os.execv(nginx, [nginx, "-c", f"{d}/nginx.conf", "-p", d])
