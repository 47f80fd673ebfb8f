#!/usr/bin/env python3
"""A kubo-shaped fake daemon for scripts/chaos.sh, as src/ipfs/fake.rs: `id`,
`pin/add`, `pin/rm` and `pin/ls` (streamed and by argument) over an in-memory
pinset, so that a chaos run measures the cluster, not a daemon. Prints its API
multiaddr on stdout and serves until killed."""

import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

pins = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, obj=None, text=None):
        body = text.encode() if text is not None else (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            # The peer went away (it is killed on purpose in a chaos run).
            pass

    def error(self, msg):
        self.reply(500, {"Message": msg, "Code": 0, "Type": "error"})

    def do_POST(self):
        u = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(u.query)
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        arg = (q.get("arg") or [""])[0]
        with lock:
            if u.path == "/api/v0/id":
                self.reply(200, {"ID": "12D3KooFakeDaemon", "Addresses": []})
            elif u.path == "/api/v0/pin/add":
                pins[arg] = "direct" if (q.get("recursive") or [""])[0] == "false" else "recursive"
                self.reply(200, {"Pins": [arg]})
            elif u.path == "/api/v0/pin/rm":
                if pins.pop(arg, None) is None:
                    self.error("not pinned or pinned indirectly")
                else:
                    self.reply(200, {"Pins": [arg]})
            elif u.path == "/api/v0/pin/ls":
                if arg:
                    if arg in pins:
                        self.reply(200, {"Keys": {arg: {"Type": pins[arg]}}})
                    else:
                        self.error(f"path '{arg}' is not pinned")
                else:
                    want = (q.get("type") or ["all"])[0]
                    out = "".join(json.dumps({"Cid": c, "Type": t}) + "\n"
                                  for c, t in pins.items() if want in ("all", t))
                    self.reply(200, text=out)
            else:
                self.reply(404, {"Message": "Not Found", "Code": 3, "Type": "error"})


class Server(ThreadingHTTPServer):
    # Peers killed mid-call reset their connections: expected in a chaos run.
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


server = Server(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
server.daemon_threads = True
print(f"/ip4/127.0.0.1/tcp/{server.server_address[1]}", flush=True)
server.serve_forever()
