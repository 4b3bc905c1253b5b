"""A file server that drops the connection mid-body: a download killed midway, for real.

It serves `<root>/<id>/<file>` under /artifacts/checkpoints/ with single-range `Range`
support, like the gateway, and for the first `cuts` responses of a file it sends `cut_after`
body bytes and then closes the socket. It records every Range header it was sent.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PREFIX = "/artifacts/checkpoints/"
RANGE = re.compile(r"bytes=(\d+)-$")


@dataclass
class CutPlan:
    file: str  # the manifest path whose responses are cut, e.g. model.safetensors
    cut_after: int
    cuts: int  # how many responses are cut (a large number: every one)
    ranges: list[str] = field(default_factory=list)  # Range headers received for `file`
    cut_done: int = 0


def _handler(root: Path, plan: CutPlan | None) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if not self.path.startswith(PREFIX):
                self.send_error(404)
                return
            relative = self.path[len(PREFIX) :]
            path = (root / relative).resolve()
            if root.resolve() not in path.parents or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = 0
            header = self.headers.get("Range")
            name = relative.split("/", 1)[1]
            cut = False
            if plan is not None and name == plan.file:
                with lock:
                    if header:
                        plan.ranges.append(header)
                    if plan.cut_done < plan.cuts:
                        plan.cut_done += 1
                        cut = True
            if header and (match := RANGE.match(header)):
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if cut and plan is not None:
                self.wfile.write(body[: plan.cut_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the peer sees the body end early: a broken read
                return
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(root: Path, plan: CutPlan | None = None) -> Iterator[str]:
    """A running server's base URL; stopped on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, plan))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
