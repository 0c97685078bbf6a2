"""A throttling TCP proxy that makes loopback behave like a slow network link.

    python bench/linkproxy.py --target 127.0.0.1:9000 --rate 100mbit --rtt 40ms [--listen PORT]

Each direction is one pipe shared by every connection of the proxy (it is one link): a chunk
read from one side is serialized at ``rate`` behind everything already queued in that
direction (a token bucket with no burst), then released to the other side ``latency_s`` after
its last byte was serialized (propagation delay). A request/response therefore pays one round
trip (twice latency_s) plus its bytes at the rate, and bulk transfers top out at the rate per
direction however many connections share it. A new connection also pays the TCP handshake:
its client's data is read only one round trip after the accept.

When a direction's queue holds more than ``queue_s`` seconds of serialization, readers stop
reading (the bottleneck's buffer is full), so the senders see the usual TCP backpressure.

``latency_s`` is one-way: "a 40 ms link" is ``latency_s=0.020``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

CHUNK = 64 * 1024
# One connection may hold this many chunks read but not yet delivered (a receiver that
# stops reading stops its sender, not the whole proxy).
CONN_QUEUE_CHUNKS = 64


@dataclass
class _Pipe:
    """One direction of the link: a serializer at ``rate`` (bytes/s) plus a fixed delay."""

    rate: float
    latency: float
    queue_s: float
    free_at: float = 0.0  # loop time when the serializer is next idle
    bytes: int = 0

    def schedule(self, now: float, nbytes: int) -> float:
        """Queue ``nbytes`` arriving ``now``; returns when they leave the far end."""
        start = max(now, self.free_at)
        self.free_at = start + nbytes / self.rate
        self.bytes += nbytes
        return self.free_at + self.latency

    def backlog(self, now: float) -> float:
        return self.free_at - now


@dataclass
class _Counters:
    connections: int = 0
    active: int = 0
    max_active: int = 0
    exchanges: int = 0  # a client sending again after the server answered, plus first sends
    errors: int = 0


def parse_rate(text: str) -> float:
    """'100mbit' / '8Mbit' / '512kbit' / '1gbit' / '1e6' (bits per second) -> bits per second."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kmg]?)(bit|bps|b/s)?\s*", text.lower())
    if not m:
        raise ValueError(f"not a rate: {text!r} (e.g. 100mbit)")
    scale = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    value = float(m.group(1)) * scale
    if value <= 0:
        raise ValueError("the rate must be positive")
    return value


def parse_duration(text: str) -> float:
    """'40ms' / '0.04s' / '40000us' / '0' -> seconds."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*(us|ms|s)?\s*", text.lower())
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 40ms)")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}[m.group(2)]


class LinkProxy:
    """Forward ``listen_host:listen_port`` to ``target_host:target_port`` through an emulated
    link: ``rate_bits_per_s`` in each direction, ``latency_s`` one-way delay in each direction.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        rate_bits_per_s: float,
        latency_s: float,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        queue_s: float = 0.05,
        trace: bool = False,
    ) -> None:
        """``trace``: keep (seconds since start, connection number, first line) of every
        request/response turn's request in ``requests`` (an HTTP request line)."""
        if rate_bits_per_s <= 0 or latency_s < 0:
            raise ValueError("rate must be > 0 and latency >= 0")
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.latency = latency_s
        rate = rate_bits_per_s / 8 if math.isfinite(rate_bits_per_s) else math.inf
        self._up = _Pipe(rate, latency_s, queue_s)  # client -> target
        self._down = _Pipe(rate, latency_s, queue_s)  # target -> client
        self._counters = _Counters()
        self.trace = trace
        self.requests: list[tuple[float, int, str]] = []
        self._t0 = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._port = 0

    # -- public --------------------------------------------------------------------------

    def start(self) -> int:
        """Bind, serve from a daemon thread, and return the bound port."""
        sock = socket.create_server(self.listen, backlog=256)
        self._port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._t0 = loop.time()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def serve() -> None:
                self._server = await asyncio.start_server(self._handle, sock=sock)
                ready.set()

            loop.run_until_complete(serve())
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="linkproxy", daemon=True)
        self._thread.start()
        ready.wait()
        return self._port

    @property
    def port(self) -> int:
        return self._port

    def close(self) -> None:
        """Stop accepting, cut every connection and join the thread."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop = None
        self._thread = None

    def now(self) -> float:
        """Seconds since start on the clock of ``requests``."""
        assert self._loop is not None
        return self._loop.time() - self._t0

    def stats(self) -> dict[str, int]:
        """Bytes each way (``bytes_up`` = client to target), connections accepted, the most
        open at once, and ``exchanges``: how often a client sent after the server had
        answered on that connection (first sends included), i.e. request/response turns."""
        c = self._counters
        return {
            "bytes_up": self._up.bytes,
            "bytes_down": self._down.bytes,
            "connections": c.connections,
            "max_active": c.max_active,
            "exchanges": c.exchanges,
            "errors": c.errors,
        }

    def __enter__(self) -> LinkProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the loop ------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        c = self._counters
        c.connections += 1
        c.active += 1
        c.max_active = max(c.max_active, c.active)
        number = c.connections
        loop = asyncio.get_running_loop()
        # The client's first bytes leave only after SYN / SYN-ACK: one round trip.
        handshake_done = loop.time() + 2 * self.latency
        writers = [c_writer]
        pumps: list[asyncio.Future[None]] = []
        clean = False
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target, limit=2 * CHUNK)
            writers.append(t_writer)
            answered = [True]  # the target has answered since the client last sent

            def on_up(data: bytes) -> None:
                if answered[0]:
                    answered[0] = False
                    c.exchanges += 1
                    if self.trace:
                        line = data[:200].split(b"\r\n", 1)[0].decode("latin-1")
                        self.requests.append((loop.time() - self._t0, number, line))

            def on_down(data: bytes) -> None:
                answered[0] = True

            pumps = [
                asyncio.ensure_future(
                    self._pump(c_reader, t_writer, self._up, handshake_done, on_up)
                ),
                asyncio.ensure_future(self._pump(t_reader, c_writer, self._down, 0.0, on_down)),
            ]
            await asyncio.gather(*pumps)
            clean = True
        except (OSError, asyncio.IncompleteReadError):
            c.errors += 1
        except asyncio.CancelledError:
            pass  # the proxy is closing: end quietly
        finally:
            for pump in pumps:
                pump.cancel()
            c.active -= 1
            for w in writers:
                if clean:
                    w.close()
                else:
                    w.transport.abort()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pipe: _Pipe,
        not_before: float,
        on_data: Callable[[bytes], None],
    ) -> None:
        """Read from one side, shape, deliver to the other; EOF is forwarded as a half-close."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(CONN_QUEUE_CHUNKS)
        deliver = asyncio.ensure_future(self._deliver(queue, writer))
        last = 0.0
        try:
            wait = not_before - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            while True:
                data = await reader.read(CHUNK)
                now = loop.time()
                if not data:
                    await queue.put((max(last, now + pipe.latency), None))
                    break
                on_data(data)
                last = pipe.schedule(now, len(data))
                await queue.put((last, data))
                backlog = pipe.backlog(loop.time()) - pipe.queue_s
                if backlog > 0:
                    await asyncio.sleep(backlog)
            await deliver
        except BaseException:
            deliver.cancel()
            raise

    @staticmethod
    async def _deliver(
        queue: asyncio.Queue[tuple[float, bytes | None]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--rate", default="100mbit", help="per direction, e.g. 100mbit")
    ap.add_argument("--rtt", default="40ms", help="round trip; each direction gets half")
    ap.add_argument("--listen", type=int, default=0, help="port (default: any free one)")
    args = ap.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    proxy = LinkProxy(
        host or "127.0.0.1",
        int(port),
        rate_bits_per_s=parse_rate(args.rate),
        latency_s=parse_duration(args.rtt) / 2,
        listen_port=args.listen,
    )
    print(proxy.start(), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    proxy.close()
    print(proxy.stats(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
