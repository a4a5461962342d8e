"""One poll + analyse cycle over 8 running llama-servers (goal: under 50 ms).

Starts 8 tiny llama-servers, sends each one request so its slots hold tokens, then times
``Poller.poll()`` (memory + discovery + HTTP to every server, concurrently) and
``Engine.analyse()`` (attribution, forecasts, advice) over many cycles, with the real
process scan and with discovery limited to the 8 servers (other llama-servers on the
machine do not count then). Prints median / p90 / max in milliseconds.

Run: ``python benchmarks/bench_poll.py [--servers 8] [--cycles 40]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import tiny_servers
from kvwall.budget.engine import Engine
from kvwall.monitors.devices import MemorySources
from kvwall.monitors.discovery import Scanner
from kvwall.monitors.poller import Poller

GOAL_MS = 50.0


def _touch(url: str) -> None:
    body = json.dumps({"prompt": "hello " * 20, "n_predict": 4, "cache_prompt": True}).encode()
    req = urllib.request.Request(url + "/completion", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()


def _stats(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return (f"median {statistics.median(values):6.1f}  p90 {p90:6.1f}  "
            f"max {values[-1]:6.1f}")


def _measure(label: str, poller: Poller, cycles: int, expect: int) -> float:
    engine = Engine()
    for _ in range(3):  # warm-up: clients, GGUF header cache, what-ifs
        engine.analyse(poller.poll())
    polls, analyses, totals = [], [], []
    found = 0
    for _ in range(cycles):
        t0 = time.perf_counter()
        snap = poller.poll()
        t1 = time.perf_counter()
        report = engine.analyse(snap)
        t2 = time.perf_counter()
        polls.append((t1 - t0) * 1e3)
        analyses.append((t2 - t1) * 1e3)
        totals.append((t2 - t0) * 1e3)
        found = sum(1 for s in report.servers if s.health == "ok")
    print(f"{label}: {found} servers answering (expected >= {expect}), {cycles} cycles, ms")
    print(f"  poll     {_stats(polls)}")
    print(f"  analyse  {_stats(analyses)}")
    print(f"  total    {_stats(totals)}   goal < {GOAL_MS:.0f} ms")
    return statistics.median(totals)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=8)
    ap.add_argument("--cycles", type=int, default=40)
    args = ap.parse_args()
    with tiny_servers(args.servers) as servers:
        for _, url in servers:
            _touch(url)
        pids = {p.pid for p, _ in servers}
        scanner = Scanner()  # the poller's default: a per-process cache across scans

        def only_ours(extra_urls=(), api_keys=None):
            found = scanner(extra_urls=extra_urls, api_keys=api_keys)
            return [s for s in found.servers if s.pid in pids]

        with Poller(MemorySources(), discover_fn=only_ours) as poller:
            ours = _measure(f"{args.servers} servers, discovery limited to them", poller,
                            args.cycles, args.servers)
        with Poller(MemorySources()) as poller:
            full = _measure("same, with the full process scan (other servers included)",
                            poller, args.cycles, args.servers)
    print(f"\nresult: one poll+analyse cycle over {args.servers} servers: median "
          f"{ours:.1f} ms (full scan {full:.1f} ms); goal < {GOAL_MS:.0f} ms: "
          f"{'met' if ours < GOAL_MS else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
