"""`python -m app.serve`: run the API as WEB_CONCURRENCY uvicorn processes, each
listening on its own SO_REUSEPORT socket.

Why not `uvicorn --workers N`: its processes share one listening socket and
whichever is awake first accepts, so a handful of keep-alive clients can all
land on one process while the other idles (docs/experiments.md). With a socket per process the kernel
spreads connections over them by address hash. The parent only forwards
SIGTERM/SIGINT (each process drains its in-flight requests) and restarts a
process that died.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

import uvicorn

from .api import drain
from .core import logs
from .core.config import get_settings

log = logging.getLogger("rapid_adapt.serve")


def listen_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def ensure_free(host: str, port: int) -> None:
    """Refuse a port another program listens on. The API's own sockets use SO_REUSEPORT, which
    would let a second deployment bind beside the first and the kernel split traffic between
    them; a plain bind (no SO_REUSEPORT) fails on any listener, so this check comes first."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as exc:
        raise SystemExit(f"app.serve: {host}:{port} is already in use ({exc.strerror}); refusing to share it") from None
    finally:
        probe.close()


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM drains for `drain_seconds` (app/api/drain.py) before the
    graceful shutdown begins; a second signal, or SIGINT, goes straight to it."""

    def __init__(self, config: uvicorn.Config, drain_seconds: float):
        super().__init__(config)
        self.drain_seconds = drain_seconds

    def handle_exit(self, sig: int, frame) -> None:
        if sig == signal.SIGTERM and self.drain_seconds > 0 and not drain.active():
            drain.begin()
            log.info("draining", extra={"seconds": self.drain_seconds})
            threading.Timer(self.drain_seconds, super().handle_exit, (sig, frame)).start()
            return
        super().handle_exit(sig, frame)


def serve(host: str, port: int, graceful: int, log_level: str) -> None:
    """One API process on its own socket."""
    config = uvicorn.Config(
        "app.main:app", host=host, port=port, timeout_graceful_shutdown=graceful, log_level=log_level, workers=1
    )
    DrainingServer(config, get_settings().drain_seconds).run(sockets=[listen_socket(host, port)])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m app.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
    p.add_argument("--timeout-graceful-shutdown", type=int, default=20)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers (WEB_CONCURRENCY) must be at least 1")
    ensure_free(args.host, args.port)  # once, here, not in N restarting children
    serve_args = (args.host, args.port, args.timeout_graceful_shutdown, args.log_level)
    if args.workers == 1:
        return serve(*serve_args)
    # the processes' metrics in one place (app/api/metrics.py), fresh for this run
    metrics_dir = tempfile.mkdtemp(prefix="rapid-adapt-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    logs.configure()  # the parent's own lines (a restarted process) as JSON, like the API's
    ctx = multiprocessing.get_context("spawn")
    start = lambda: ctx.Process(target=serve, args=serve_args, name="api", daemon=False)
    procs = [start() for _ in range(args.workers)]
    for proc in procs:
        proc.start()
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for i, proc in enumerate(procs):
            if not proc.is_alive() and not stopping:
                log.warning("API process %s exited with %s; starting another", proc.pid, proc.exitcode)
                procs[i] = start()
                procs[i].start()
        time.sleep(0.5)
    for proc in procs:
        proc.join()
    shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
