"""bench/linkproxy.py shapes traffic like a link: rate per direction shared by all
connections, one-way delay on data, half-closes forwarded. The timed assertions test the
proxy's own shaping and are deliberately loose."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from linkproxy import LinkProxy, parse_duration, parse_rate  # noqa: E402

MB = 1_000_000


class _Handler(socketserver.BaseRequestHandler):
    """Reads until the client half-closes, then answers with what it read (echo after EOF),
    or, for a request starting with b'ping', answers b'pong' at once, request by request."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        received = bytearray()
        while True:
            data = sock.recv(65536)
            if not data:
                break
            if data.startswith(b"ping") and not received:
                sock.sendall(b"pong")
                continue
            received += data
        sock.sendall(bytes(received))
        sock.shutdown(socket.SHUT_WR)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def backend() -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _send_all_then_read(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = bytearray()
        while data := s.recv(65536):
            out += data
        return bytes(out)


def test_rates_and_durations_parse() -> None:
    assert parse_rate("100mbit") == 100e6
    assert parse_rate("8Mbit") == 8e6
    assert parse_rate("512kbit") == 512e3
    assert parse_duration("40ms") == pytest.approx(0.040)
    assert parse_duration("0.5s") == 0.5
    with pytest.raises(ValueError):
        parse_rate("fast")


def test_a_half_closed_connection_delivers_everything_both_ways(backend: int) -> None:
    payload = bytes(range(256)) * 4000  # ~1 MB, through many 64 KiB chunks
    with LinkProxy("127.0.0.1", backend, rate_bits_per_s=400e6, latency_s=0.002) as proxy:
        echoed = _send_all_then_read(proxy.port, payload)
        stats = proxy.stats()
    assert echoed == payload
    assert stats["bytes_up"] == len(payload)
    assert stats["bytes_down"] == len(payload)
    assert stats["connections"] == 1


def test_one_megabyte_at_8_mbit_takes_about_a_second(backend: int) -> None:
    with LinkProxy("127.0.0.1", backend, rate_bits_per_s=8e6, latency_s=0.001) as proxy:
        # Upload 1 MB; the echo back runs in the other direction's own pipe.
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.sendall(b"x" * MB)
            s.shutdown(socket.SHUT_WR)
            first = s.recv(1)  # the echo starts once the whole upload has arrived
            elapsed = time.monotonic() - t0
            while s.recv(65536):
                pass
    assert first == b"x"
    assert 0.95 <= elapsed <= 1.6


def test_a_request_and_its_response_pay_the_round_trip(backend: int) -> None:
    with (
        LinkProxy("127.0.0.1", backend, rate_bits_per_s=100e6, latency_s=0.025) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port)) as s,
    ):
        t0 = time.monotonic()
        s.sendall(b"ping")
        assert s.recv(4) == b"pong"
        first = time.monotonic() - t0  # the handshake's round trip, then the exchange's
        t1 = time.monotonic()
        s.sendall(b"ping")
        assert s.recv(4) == b"pong"
        second = time.monotonic() - t1
        stats = proxy.stats()
    assert first >= 0.100
    assert second >= 0.050
    assert stats["exchanges"] == 2


def test_concurrent_connections_share_the_bandwidth(backend: int) -> None:
    done: list[float] = []
    with LinkProxy("127.0.0.1", backend, rate_bits_per_s=8e6, latency_s=0.001) as proxy:
        t0 = time.monotonic()

        def upload() -> None:
            with socket.create_connection(("127.0.0.1", proxy.port)) as s:
                s.sendall(b"y" * (MB // 4))
                s.shutdown(socket.SHUT_WR)
                s.recv(1)
                done.append(time.monotonic() - t0)

        threads = [threading.Thread(target=upload) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = proxy.stats()
    assert len(done) == 4
    # Together they moved 1 MB up: about one second at 8 Mbit/s, not a quarter of it.
    assert max(done) >= 0.95
    assert stats["max_active"] >= 2


def test_runs_from_the_command_line(backend: int) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(BENCH / "linkproxy.py"),
            "--target",
            f"127.0.0.1:{backend}",
            "--rate",
            "100mbit",
            "--rtt",
            "10ms",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        assert _send_all_then_read(port, b"hello") == b"hello"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
