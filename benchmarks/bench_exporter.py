"""CPU of ``kvwall exporter`` idle and with ten scrapers at 1 Hz, and the time of one scrape.

Starts tiny llama-servers, runs the real exporter as a subprocess (default interval), and
reads its CPU time with psutil over a measuring window after a warm-up: first with nobody
scraping, then with ten threads each fetching ``/metrics`` once a second (what ten
Prometheus servers would cost). One poll loop serves every scraper, so the two figures
should be close. The scrape time is the median wall time of a ``GET /metrics``.
Prints figures; asserts nothing.

Run: ``python benchmarks/bench_exporter.py [--servers 2] [--seconds 30] [--scrapers 10]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import tiny_servers

WARMUP_S = 5.0
START_DEADLINE_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:
        resp.read()
    return time.perf_counter() - started


@contextlib.contextmanager
def exporter() -> Iterator[tuple[psutil.Process, str]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    proc = subprocess.Popen([sys.executable, "-m", "kvwall.app", "exporter", "--listen",
                             f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            try:
                _get(url + "/")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("kvwall exporter did not start") from None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.1)
        yield psutil.Process(proc.pid), url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_percent(ps: psutil.Process, seconds: float) -> float:
    c0, t0 = ps.cpu_times(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = ps.cpu_times(), time.monotonic()
    return 100.0 * ((c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0)


def scrapers(url: str, count: int, stop: threading.Event) -> list[threading.Thread]:
    def scrape() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(OSError):
                _get(url + "/metrics")
            next_at += 1.0
            stop.wait(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=scrape, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--scrapers", type=int, default=10)
    args = p.parse_args()
    with tiny_servers(args.servers), exporter() as (ps, url):
        time.sleep(WARMUP_S)  # imports, the first polls and what-ifs
        idle = cpu_percent(ps, args.seconds)
        stop = threading.Event()
        threads = scrapers(url, args.scrapers, stop)
        time.sleep(2.0)
        busy = cpu_percent(ps, args.seconds)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        times = [_get(url + "/metrics") for _ in range(20)]
        size = len(urllib.request.urlopen(url + "/metrics", timeout=10).read())
    print(f"kvwall exporter, {args.servers} llama-server(s), {args.seconds:g} s windows")
    print(f"  idle (poll loop only):           {idle:5.2f} % of one core")
    print(f"  with {args.scrapers} scrapers at 1 Hz:      {busy:5.2f} % of one core")
    print(f"  one scrape of /metrics:          {statistics.median(times) * 1000:5.1f} ms "
          f"median (min {min(times) * 1000:.1f} ms, {size} bytes)")


if __name__ == "__main__":
    main()
