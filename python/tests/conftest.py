"""Fixtures: a real three-node testnet (started once per session) and a tiny recording HTTP server.

The testnet is the project's own CLI (`tensormesh testnet --json`) run by
the project's Node 22 (node_modules/.bin/node; the system node may be
older). Its one JSON line on stdout says the mesh has formed: every node
sees the others. Teardown sends SIGTERM to that one process and waits for
it; its daemons stop with it (and exit on their own if it dies, through
their IPC channel).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # python/tests -> python -> repo root

try:
    import tensormesh  # noqa: F401  (the installed package, as users get it)
except ImportError:  # not installed: test the source tree
    sys.path.insert(0, str(HERE.parent / "src"))

#: Formation of a 3-node mesh takes ~5 s here; allow for a loaded 2-core machine.
TESTNET_READY_TIMEOUT_S = 90
TESTNET_STOP_TIMEOUT_S = 30


def _node_binary() -> str:
    local = ROOT / "node_modules" / ".bin" / "node"
    if not local.exists():
        pytest.skip(f"{local} is missing: run `npm ci` in {ROOT} (the project needs Node 22)")
    return str(local)


def _read_line(stream: Any, timeout: float) -> Optional[bytes]:
    """One line from a pipe, or None after `timeout` seconds (a reader thread; pipes have no timeout)."""
    out: "queue.Queue[bytes]" = queue.Queue()
    threading.Thread(target=lambda: out.put(stream.readline()), daemon=True).start()
    try:
        return out.get(timeout=timeout)
    except queue.Empty:
        return None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=TESTNET_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=TESTNET_STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def testnet() -> Iterator[List[Dict[str, Any]]]:
    """The nodes of a running 3-node testnet: [{peerId, api, pid, multiaddrs, token}]."""
    node = _node_binary()
    log = tempfile.NamedTemporaryFile(prefix="tensormesh-testnet-", suffix=".log", delete=False)
    cmd = [node, str(ROOT / "bin" / "tensormesh.js"), "testnet", "--nodes", "3", "--json", "--workers", "1", "--advert-interval", "500"]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    try:
        line = _read_line(proc.stdout, TESTNET_READY_TIMEOUT_S)
        if not line:
            _stop(proc)
            log.close()
            raise RuntimeError(f"testnet printed no JSON line within {TESTNET_READY_TIMEOUT_S} s (exit {proc.poll()}); stderr:\n{Path(log.name).read_text()[-4000:]}")
        nodes = json.loads(line)["nodes"]
        assert len(nodes) == 3 and all(n["api"].startswith("http://127.0.0.1:") for n in nodes)
        yield nodes
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()
        os.unlink(log.name)


@pytest.fixture(scope="session")
def mesh(testnet: List[Dict[str, Any]]) -> Iterator["tensormesh.Mesh"]:
    from tensormesh import Mesh

    # The testnet gives all its nodes one API token and prints it.
    with Mesh(testnet[0]["api"], token=testnet[0]["token"]) as m:
        yield m


class Recorder:
    """What the recording server saw, and what it answers."""

    def __init__(self) -> None:
        self.requests: List[Dict[str, Any]] = []
        self.status = 200
        self.body: bytes = b"{}"
        self.url = ""


@pytest.fixture()
def recorder() -> Iterator[Recorder]:
    """An HTTP server on 127.0.0.1 that records each request (method, path, headers, body) and answers `status`/`body`."""
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            rec.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
            self.send_response(rec.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(rec.body)))
            self.end_headers()
            self.wfile.write(rec.body)

        do_GET = do_POST = do_DELETE = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> Tuple[Any, int]:
    """A bound, non-listening socket: connecting to its port is refused for as long as it is held."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]
