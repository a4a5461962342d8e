"""CPU cost of ``kvwall status --watch 1`` (goal: under 2% of one core) and the wall time of
one ``kvwall status --json`` (llamastat's ``--once --json``: 1.2 s).

Starts tiny llama-servers, runs the real CLI as a subprocess, and reads its CPU time with
psutil over a measuring window after a warm-up (imports and the first what-ifs excluded).
Prints percentages of one core, and one-shot wall times (median of a few runs).

Run: ``python benchmarks/bench_status_cpu.py [--servers 8] [--seconds 30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import tiny_servers

GOAL_PERCENT = 2.0
LLAMASTAT_ONCE_S = 1.2
WARMUP_S = 5.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvwall.app", "status", *args]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}


def watch_cpu(args: list[str], seconds: float) -> float:
    """Percent of one core used by ``kvwall status`` with ``args`` over ``seconds``."""
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=_env())
    try:
        ps = psutil.Process(proc.pid)
        time.sleep(WARMUP_S)
        if proc.poll() is not None:
            raise SystemExit(f"kvwall status exited: {proc.stderr.read().decode()[-500:]}")
        c0, t0 = ps.cpu_times(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = ps.cpu_times(), time.monotonic()
        used = (c1.user - c0.user) + (c1.system - c0.system)
        return 100.0 * used / (t1 - t0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def one_shot(runs: int = 5) -> tuple[float, float, int]:
    """(median wall seconds, median CPU seconds, servers found) of ``kvwall status --json``."""
    walls, cpus, found = [], [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        r0 = os.times()
        done = subprocess.run(_cli("--json"), capture_output=True, env=_env(), timeout=60)
        r1 = os.times()
        walls.append(time.perf_counter() - t0)
        cpus.append((r1.children_user - r0.children_user)
                    + (r1.children_system - r0.children_system))
        if done.returncode != 0:
            raise SystemExit(done.stderr.decode()[-500:])
        found = len(json.loads(done.stdout)["servers"])
    return statistics.median(walls), statistics.median(cpus), found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()

    wall0, cpu0, n0 = one_shot()
    print(f"one-shot `kvwall status --json`, {n0} server(s) running: wall {wall0 * 1e3:.0f} ms, "
          f"CPU {cpu0 * 1e3:.0f} ms (llamastat --once --json: {LLAMASTAT_ONCE_S:.1f} s)")
    with tiny_servers(args.servers):
        wall, cpu, n = one_shot()
        print(f"one-shot `kvwall status --json`, {n} server(s) running: wall "
              f"{wall * 1e3:.0f} ms, CPU {cpu * 1e3:.0f} ms")
        for label, extra in (("--watch 1 --json", ["--watch", "1", "--json"]),
                             ("--watch 1 (text)", ["--watch", "1"])):
            pct = watch_cpu(extra, args.seconds)
            print(f"`kvwall status {label}` with {args.servers} servers: {pct:.2f}% of one core "
                  f"over {args.seconds:.0f} s (goal < {GOAL_PERCENT:.0f}%: "
                  f"{'met' if pct < GOAL_PERCENT else 'NOT met'})")
    print("note: other llama-servers running on this machine are found and polled too.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
