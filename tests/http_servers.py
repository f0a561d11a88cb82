"""Web servers for the formats read by URL: one that answers byte ranges (as object stores
and web servers do) and one that does not (Python's own, some static hosts)."""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
import time

import pytest


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that answers byte ranges (zarr v3 shards are read by range)."""

    def send_head(self):  # noqa: D401 - http.server's hook
        rng, path = self.headers.get("Range"), self.translate_path(self.path)
        m = re.match(r"bytes=(\d*)-(\d*)$", (rng or "").strip())
        if not m or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        a, b = m.groups()
        start, end = (max(0, size - int(b)), size - 1) if a == "" else (int(a), min(int(b) if b else size - 1, size - 1))
        f = open(path, "rb")  # noqa: SIM115 - closed by http.server after copyfile
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._left = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        left, self._left = getattr(self, "_left", None), None
        outputfile.write(source.read(left)) if left is not None else super().copyfile(source, outputfile)

    def log_message(self, *args):
        pass


class _PlainHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that ignores ``Range`` and sends the whole file (status 200)."""

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # Python's default (5) drops concurrent connections; web servers take them


def _serve(folder, handler):
    server = _Server(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(tmp_path):
    """``tmp_path`` served over HTTP with byte ranges: (folder, URL)."""
    yield from _serve(tmp_path, _RangeHandler)


@pytest.fixture(params=["ranges", "no ranges"])
def served_any(request, tmp_path):
    """``tmp_path`` served by a server that answers byte ranges, then by one that does not."""
    yield from _serve(tmp_path, _RangeHandler if request.param == "ranges" else _PlainHandler)


class Stats:
    """Requests a server answered, the most it was answering at once, and the bytes it sent
    (of the files' contents)."""

    def __init__(self) -> None:
        self.requests = 0
        self.most = 0
        self.bytes = 0
        self._now = 0
        self._lock = threading.Lock()


def _counting(stats, pause):
    class Handler(_RangeHandler):
        def send_head(self):  # noqa: D401 - http.server's hook
            with stats._lock:
                stats.requests += 1
                stats._now += 1
                stats.most = max(stats.most, stats._now)
            self._left = None
            try:
                time.sleep(pause)
                found = super().send_head()
                whole = os.path.getsize(self.translate_path(self.path)) if found is not None and self.command == "GET" else 0
                with stats._lock:
                    stats.bytes += self._left if self._left is not None else whole
                return found
            finally:
                with stats._lock:
                    stats._now -= 1

    return Handler


@pytest.fixture
def served_counted(tmp_path):
    """``tmp_path`` served with byte ranges, each answer 20 ms late: (folder, URL, Stats)."""
    stats = Stats()
    for folder, url in _serve(tmp_path, _counting(stats, 0.02)):
        yield folder, url, stats
