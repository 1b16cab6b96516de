"""A stand-in HTTPS upstream for the broker tests: answers the calls the real clients make of
OpenAI (chat completions, streamed or not), the Hugging Face Hub (model info, a file's metadata
and download) and GitHub's git endpoint (smart HTTP through `git http-backend`), plus redirects,
and records every request's method, path and headers as one JSON line in LOG.

usage: upstream.py HOST CERT KEY LOG [GIT_ROOT]   (prints the port it listens on, then serves)
"""

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST, CERT, KEY, LOG = sys.argv[1:5]
GIT_ROOT = sys.argv[5] if len(sys.argv) > 5 else None
LOCK = threading.Lock()
FILE_BODY = b'{"model_type": "stand-in"}\n'
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self):
        with LOCK, open(LOG, "a") as f:
            f.write(json.dumps({
                "method": self.command,
                "path": self.path,
                "host": HOST,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }) + "\n")

    def body(self):
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def answer(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self.record()
        path = self.path.split("?", 1)[0]
        if GIT_ROOT and path.startswith("/git/"):
            return self.git(b"")
        if path.startswith("/api/models/"):
            repo = path[len("/api/models/"):]
            return self.answer(200, json.dumps({
                "id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                "siblings": [{"rfilename": "config.json"}], "tags": [], "downloads": 0,
                "likes": 0,
            }).encode())
        if "/resolve/" in path:
            return self.answer(200, FILE_BODY, extra=[
                ("x-repo-commit", COMMIT), ("etag", '"stand-in-etag"')])
        if path == "/v1/away":
            port = os.environ["OTHER_PORT"]
            return self.answer(302, b"", extra=[("location", f"https://127.0.0.2:{port}/landed")])
        if path == "/v1/home":
            return self.answer(302, b"", extra=[("location", "/v1/landed?from=home")])
        if path == "/v1/hang":
            # Answers only after the client has given up.
            time.sleep(2)
            return self.answer(200, b'{"late": true}')
        if path == "/v1/echo":
            # An upstream that echoes what it was sent (httpbin's /headers does): the one way
            # a credential comes back to the workload.
            echoed = self.headers.get("authorization", "")
            return self.answer(200, json.dumps({"authorization": echoed}).encode())
        if path in ("/v1/landed", "/landed"):
            return self.answer(200, b'{"landed": true}')
        if path == "/v1/slow":
            # Chunks a while apart: a client reading through the broker must see the first
            # before the last is written.
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"part {i} at {time.time():.3f}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.4)
            self.wfile.write(b"0\r\n\r\n")
            return
        return self.answer(200, b'{"ok": true}')

    def do_POST(self):
        self.record()
        path = self.path.split("?", 1)[0]
        body = self.body()
        if GIT_ROOT and path.startswith("/git/"):
            return self.git(body)
        if path.endswith("/chat/completions"):
            request = json.loads(body or b"{}")
            if request.get("stream"):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i, word in enumerate(["stand", "-in", " says", " hi"]):
                    event = json.dumps({
                        "id": "chatcmpl-1", "object": "chat.completion.chunk",
                        "created": 1, "model": request.get("model", "m"),
                        "choices": [{"index": 0, "delta": {"content": word},
                                     "finish_reason": None}],
                    })
                    data = f"data: {event}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    time.sleep(0.3 if i == 0 else 0.05)
                done = b"data: [DONE]\n\n"
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                return
            return self.answer(200, json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                "model": request.get("model", "m"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "stand-in reply"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            }).encode())
        if path == "/api/v1/events":
            return self.answer(202, json.dumps({"status": "ok", "event": {"id": 1}}).encode())
        if path == "/v1/messages":
            request = json.loads(body or b"{}")
            return self.answer(200, json.dumps({
                "id": "msg_1", "type": "message", "role": "assistant",
                "model": request.get("model", "m"),
                "content": [{"type": "text", "text": "stand-in reply"}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 2},
            }).encode())
        return self.answer(200, json.dumps({"echo": len(body)}).encode())

    def git(self, body):
        """Smart HTTP through git's own CGI program, as a git host serves it."""
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=GIT_ROOT, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path[len("/git"):], QUERY_STRING=query,
                   REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("content-type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_USER="stand-in")
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


server = ThreadingHTTPServer((HOST, 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(CERT, KEY)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
