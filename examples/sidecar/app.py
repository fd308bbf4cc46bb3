#!/usr/bin/env python3
"""A plain Python web app running behind quench-enclave in a Nitro Enclave.

It knows nothing about TLS or attestation: quench-enclave terminates HTTPS in
the enclave, serves /enclave/attestation, and proxies every other request to
this app on 127.0.0.1. The app only talks to quench-enclave's internal server
on the enclave's loopback: it registers the hash of its public key (bound
into every attestation document) and then signals that it is ready (with
-wait-for-app, the public server opens only then). Standard library only.
"""
import base64
import hashlib
import http.server
import os
import signal
import sys
import urllib.request

LISTEN = os.environ.get("APP_LISTEN", "127.0.0.1:8081")
QUENCH = os.environ.get("QUENCH_INTERNAL", "http://127.0.0.1:8080")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in two writes; with Nagle's algorithm on,
    # the second waits for the ACK of the first, which the proxy's kernel
    # delays (up to 40 ms on Linux). Every server behind a proxy wants
    # TCP_NODELAY; Go, nginx and Node.js set it by default, Python does not.
    disable_nagle_algorithm = True

    def do_GET(self):
        body = b"hello from a Python app in the enclave\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # quiet under load
        pass


def main():
    host, port = LISTEN.rsplit(":", 1)
    # socketserver's listen backlog is 5: when quench-enclave's proxy opens
    # connections for a burst of clients at once, the rest of the SYNs are
    # dropped and retried a second later.
    http.server.ThreadingHTTPServer.request_queue_size = 128
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True

    # An application key whose hash clients find in the attestation document
    # (here a random stand-in; a real app would hash its public key).
    key_hash = hashlib.sha256(os.urandom(32)).digest()
    urllib.request.urlopen(urllib.request.Request(
        QUENCH + "/enclave/hash", data=base64.b64encode(key_hash), method="POST"), timeout=10).read()
    urllib.request.urlopen(QUENCH + "/enclave/ready", timeout=10).read()
    print("app: listening on", LISTEN, "key hash", key_hash.hex(), flush=True)

    def stop(signum, frame):
        print("app: signal", signum, "- exiting", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
