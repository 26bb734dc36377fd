"""Fixtures: the real service binary (sandbox providers), a loopback image
server, a webhook receiver and a TCP proxy that can cut a connection."""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

BIN = os.environ.get("EDITTHINKER_BIN", str(Path(__file__).resolve().parents[3] / "target/debug/editthinker"))
QUICK = {"max_turns": 1}  # a one-turn sandbox job takes ~2 s instead of ~5 s


def make_png(width: int = 32, height: int = 32, seed: int = 0) -> bytes:
    rows = b"".join(
        b"\x00" + b"".join(bytes(((x * 8 + seed) % 256, (y * 8) % 256, 128)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@dataclass
class Service:
    base_url: str
    secret: str
    proc: "subprocess.Popen[bytes]"
    dir: Path
    log: List[str] = field(default_factory=list)


def _start_service(args: List[str], config: str) -> Service:
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"service binary not found at {BIN} (set EDITTHINKER_BIN)")
    workdir = Path(tempfile.mkdtemp(prefix="editthinker-pytest-"))
    (workdir / "editthinker.toml").write_text(config)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    # Every EDITTHINKER_* variable is configuration to the service, which
    # refuses unknown keys: ours (EDITTHINKER_BIN) must not reach it.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("EDITTHINKER_")}
    env = dict(
        inherited,
        EDITTHINKER_LISTEN="127.0.0.1:0",
        EDITTHINKER_METRICS__LISTEN="127.0.0.1:0",
        RUST_LOG="info",
        NO_COLOR="1",
        ET_WEBHOOK_SECRET=secret,
    )
    proc = subprocess.Popen([BIN, *args], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log: List[str] = []
    found: Dict[str, str] = {}
    ready = threading.Event()

    def drain() -> None:
        # Keep reading to the end so that the pipe never fills and blocks it.
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", errors="replace")
            log.append(line)
            m = re.search(r"listening addr=(127\.0\.0\.1:\d+)", line)
            if m and not ready.is_set():
                found["addr"] = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(60) or "addr" not in found:
        proc.kill()
        raise RuntimeError("service did not start:\n" + "".join(log[-30:]))
    return Service(f"http://{found['addr']}", secret, proc, workdir, log)


def _stop(service: Service) -> None:
    service.proc.terminate()
    try:
        service.proc.wait(10)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()
    shutil.rmtree(service.dir, ignore_errors=True)


SANDBOX_CONFIG = """allow_private_image_urls = true
allow_private_webhook_urls = true
[webhooks]
secret_env = "ET_WEBHOOK_SECRET"
"""

# Plain `serve` with an editor that refuses everything: jobs fail at turn 1
# with editor_refused, which is what `retry` needs.
STRICT_CONFIG = """[thinker]
kind = "sandbox"
[editors.strict]
kind = "sandbox"
refusal_rate = 1.0
latency_ms = 0
"""


@pytest.fixture(scope="session")
def service() -> Iterator[Service]:
    svc = _start_service(["serve", "--sandbox"], SANDBOX_CONFIG)
    yield svc
    _stop(svc)


@pytest.fixture(scope="session")
def strict_service() -> Iterator[Service]:
    svc = _start_service(["serve"], STRICT_CONFIG)
    yield svc
    _stop(svc)


@pytest.fixture(scope="session")
def png() -> bytes:
    return make_png()


def _serve(handler: type) -> Tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="session")
def image_url(png: bytes) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    server, url = _serve(Handler)
    yield url + "/photo.png"
    server.shutdown()


@dataclass
class Receiver:
    url: str
    deliveries: List[Tuple[Dict[str, str], bytes]]

    def wait_for(
        self, predicate: Callable[[Dict[str, str], bytes], bool], timeout: float = 20.0
    ) -> Tuple[Dict[str, str], bytes]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for headers, body in list(self.deliveries):
                if predicate(headers, body):
                    return headers, body
            time.sleep(0.1)
        raise AssertionError(f"no matching webhook delivery in {timeout} s: {self.deliveries!r}")


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[Receiver]:
    deliveries: List[Tuple[Dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server, url = _serve(Handler)
    yield Receiver(url + "/hook", deliveries)
    server.shutdown()


class CuttingProxy:
    """Forwards TCP to the service; the first connection is cut after
    `cut_after` bytes have gone back to the client."""

    def __init__(self, upstream: str, cut_after: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.cut_after = cut_after
        self.connections = 0
        self.cut = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            limit: Optional[int] = self.cut_after if self.connections == 1 else None
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, limit), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: Optional[int]) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    self.cut = True
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
