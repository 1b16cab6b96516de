"""A forward proxy for the broker tests: tunnels CONNECT (what an HTTPS client asks a proxy
for) and records each request line in LOG; any other request (plain HTTP through the proxy) is
recorded and answered 502, so a call that should not have come here shows in the log.

usage: connect_proxy.py LOG   (prints the port it listens on, then serves)
"""

import select
import socket
import socketserver
import sys
import threading

LOG = sys.argv[1]
LOCK = threading.Lock()


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().decode("latin-1").strip()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        with LOCK, open(LOG, "a") as f:
            f.write(line + "\n")
        method, target, _ = (line.split(" ") + ["", "", ""])[:3]
        if method != "CONNECT":
            self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            return
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.wfile.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        self.wfile.flush()
        ends = [self.connection, upstream]
        while True:
            ready, _, _ = select.select(ends, [], [], 30)
            if not ready:
                break
            for end in ready:
                data = end.recv(65536)
                if not data:
                    upstream.close()
                    return
                (upstream if end is self.connection else self.connection).sendall(data)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
