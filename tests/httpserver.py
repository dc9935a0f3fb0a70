"""A loopback HTTP server for tests: serves in-memory files with Range support and programmable faults.

    from tests.httpserver import Fault, LoopbackServer

    with LoopbackServer({"images.tar.gz": data}) as srv:
        srv.faults["images.tar.gz"] = Fault(cut_after=1000, times=1)  # first GET sends 1000 body bytes, then hangs up
        download(srv.url + "images.tar.gz")                           # srv.url == "http://127.0.0.1:<port>/"
        assert srv.gets("images.tar.gz")[1].headers["Range"] == "bytes=1000-"

Behaviour:
- `files` maps a URL path without the leading "/" (e.g. "images.tar.gz" or "mirror/images.tar.gz") to bytes;
  it may be changed while the server runs. Unknown paths answer 404.
- GET and HEAD. `Range: bytes=N-` or `bytes=N-M` answers 206 with `Content-Range`; N past the end answers
  416 with `Content-Range: bytes */<size>`. Every file has an ETag (from its content); `If-Range` with a
  different ETag gets the whole file (200), as RFC 9110 says.
- `faults[path]` applies a `Fault` to the next `times` requests of that path (None: to every request).
- `requests` is a log of every request (method, path, headers, status, body bytes sent).
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    """What to do wrong for a path. Several fields may be combined (stall, then the rest).

    status:       answer this HTTP status (e.g. 404, 500, 503) with a short body instead of the file.
    cut_after:    send the full headers (the real Content-Length) but only this many body bytes, then close.
    ignore_range: ignore the Range header: always 200 with the whole file.
    stall:        sleep this many seconds before answering (to trigger client read timeouts).
    times:        how many more requests this fault applies to; decremented per request. None: all.
    """

    status: int | None = None
    cut_after: int | None = None
    ignore_range: bool = False
    stall: float = 0.0
    times: int | None = None


@dataclass
class Request:
    """One logged request."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    sent: int = 0  # body bytes written
    fault: Fault | None = None


@dataclass
class _State:
    files: dict[str, bytes]
    faults: dict[str, Fault] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def take_fault(self, path: str) -> Fault | None:
        """The fault for `path`, consuming one of its `times`."""
        with self.lock:
            fault = self.faults.get(path)
            if fault is None or (fault.times is not None and fault.times <= 0):
                return None
            if fault.times is not None:
                fault.times -= 1
            return fault


def etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        state = self.server.state
        path = self.path.split("?", 1)[0].lstrip("/")
        entry = Request(self.command, path, dict(self.headers.items()))
        with state.lock:
            state.requests.append(entry)
        fault = entry.fault = state.take_fault(path)
        if fault and fault.stall:
            state.stop.wait(fault.stall)
        data = state.files.get(path)
        if fault and fault.status is not None:
            return self._status(entry, fault.status, body)
        if data is None:
            return self._status(entry, 404, body)

        start, end = 0, len(data)
        wants_range = "Range" in self.headers and not (fault and fault.ignore_range)
        if_range = self.headers.get("If-Range")
        if wants_range and (if_range is None or if_range == etag(data)):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers["Range"].strip())
            if m and not (m.group(2) and int(m.group(2)) < int(m.group(1))):  # else: ignore it, send all
                start = int(m.group(1))
                end = min(int(m.group(2)) + 1, len(data)) if m.group(2) else len(data)
                if start >= len(data):
                    entry.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
        partial = (start, end) != (0, len(data))
        entry.status = 206 if partial else 200
        self.send_response(entry.status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", etag(data))
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        payload = data[start:end]
        if fault and fault.cut_after is not None:
            payload = payload[: fault.cut_after]
            self.close_connection = True
        self.wfile.write(payload)
        self.wfile.flush()
        entry.sent = len(payload)

    def _status(self, entry: Request, code: int, body: bool) -> None:
        entry.status = code
        text = f"{code} {http.HTTPStatus(code).phrase}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)
            entry.sent = len(text)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up is not an error here
            super().handle_error(request, client_address)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving `files`; use as a context manager."""

    def __init__(self, files: dict[str, bytes] | None = None):
        self._state = _State(dict(files or {}))
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LoopbackServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.state = self._state
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-http", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._state.stop.set()
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "use LoopbackServer as a context manager"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL with a trailing slash, e.g. http://127.0.0.1:40123/"""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def files(self) -> dict[str, bytes]:
        return self._state.files

    @property
    def faults(self) -> dict[str, Fault]:
        return self._state.faults

    @property
    def requests(self) -> list[Request]:
        with self._state.lock:
            return list(self._state.requests)

    def gets(self, path: str) -> list[Request]:
        """The GET requests for `path`, in order."""
        return [r for r in self.requests if r.method == "GET" and r.path == path]

    def bytes_sent(self, path: str) -> int:
        """Total body bytes sent for `path` over all requests."""
        return sum(r.sent for r in self.requests if r.path == path)


def closed_port_url() -> str:
    """An http base URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
