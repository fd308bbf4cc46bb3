"""An upstream app for proxy/interop_test.go, on Python's standard library
only. Usage: python3 app.py [1.1|1.0]. It listens on a free loopback port
and prints the port on stdout."""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = sys.argv[1] if len(sys.argv) > 1 else "1.1"
RELEASE = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/" + VERSION
    # disable_nagle_algorithm stays False, as by default: the head and the
    # body go out in separate writes with Nagle's algorithm on.

    def log_message(self, *args):
        pass

    def _hello(self, send_body):
        body = b"hello from python\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Peer-Port", str(self.client_address[1]))
        self.end_headers()  # one write: the head
        if send_body:
            self.wfile.write(body)  # another: the body

    def do_GET(self):
        if self.path == "/hello":
            self._hello(True)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"alpha,", b"beta,", b"gamma"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/stream":
            # Events until /release, then the end (the close, with
            # HTTP/1.0): each must reach the client as it is written.
            RELEASE.clear()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b"data: first\n\n")
            RELEASE.wait(5)
            self.wfile.write(b"data: second\n\n")
        elif self.path == "/release":
            RELEASE.set()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/big":
            # HTTP/1.0 style: no length, the body ends when the connection
            # closes.
            body = b"".join(b"line %05d\n" % i for i in range(20000))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if VERSION == "1.1":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(0, len(body), 8192):
                self.wfile.write(body[i : i + 8192])
        elif self.path == "/error":
            # An HTML error page with "Connection: close"; the
            # connection closes after it.
            self.send_error(418, "teapot")
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def do_HEAD(self):
        if self.path == "/hello":
            self._hello(False)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n)
        body = b"got " + str(len(data)).encode() + b": " + data
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sys.stdout.write("%d\n" % srv.server_address[1])
    sys.stdout.flush()
    # The test closes stdin (or dies): leave then.
    sys.stdin.read()


if __name__ == "__main__":
    main()
