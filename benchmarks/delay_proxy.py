"""A TCP proxy that delays every chunk by a fixed time in each direction.

It accepts on 127.0.0.1:PORT, connects each client to the target, and forwards
both directions. Every chunk read from one side is written to the other side
``delay`` seconds after it was read, in order. Nothing else is limited: the
proxy reads as fast as data comes, however much is in flight, so the link has
latency but no bandwidth limit (like a long, fat network with large TCP windows).

    python -m benchmarks.delay_proxy --target-port 2222 --delay 0.05 [--port 0]

prints ``listening on PORT`` when ready and runs until killed. From Python,
``start_proxy(target_port, delay)`` runs it as a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

READ_SIZE = 256 << 10


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   delay: float) -> None:
    """Copy reader to writer, each chunk delayed by ``delay`` s after it was read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        try:
            while True:
                data = await reader.read(READ_SIZE)
                queue.put_nowait((loop.time() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time() + delay, b""))

    async def emit() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    pumping = asyncio.create_task(pump())
    try:
        await emit()
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping


async def _serve_client(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                        target: tuple[str, int], delay: float) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.close()
        return
    up = asyncio.create_task(_forward(client_r, server_w, delay))
    down = asyncio.create_task(_forward(server_r, client_w, delay))
    try:
        # Done when both directions ended, or one failed (then drop the other).
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for w in (client_w, server_w):
            w.close()
        for w in (client_w, server_w):
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()


async def serve(port: int, target: tuple[str, int], delay: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve_client(r, w, target, delay), "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    p.add_argument("--target-host", default="127.0.0.1")
    p.add_argument("--target-port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.05, help="seconds, each way")
    ns = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(ns.port, (ns.target_host, ns.target_port), ns.delay))
    return 0


def start_proxy(target_port: int, delay: float,
                target_host: str = "127.0.0.1") -> tuple[subprocess.Popen[str], int]:
    """Start the proxy as a child process; (process, port it listens on)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.delay_proxy", "--target-host", target_host,
         "--target-port", str(target_port), "--delay", str(delay)],
        cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"delay proxy did not start: {line!r}")
    return proc, int(line.split()[-1])


def stop_proxy(proc: subprocess.Popen[str]) -> None:
    """Stop a proxy started with start_proxy."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
