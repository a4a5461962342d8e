"""Prints the cost and accuracy of the memory pool forecast (budget/forecast.py PoolTracker).

Synthetic polls every 2 s of a pool whose used memory grows 300 MiB a minute, with
Gaussian noise of several sizes; prints the forecast error against the truth, the
confidence, the cost per poll (observe + forecast of 4 pools) and the points kept.
"""

from __future__ import annotations

import random
import time

from kvwall.budget.forecast import PoolTracker
from kvwall.monitors.snapshot import DeviceMemory

GIB, MIB = 1024**3, 1024**2


def pools(free: float) -> list[DeviceMemory]:
    return [DeviceMemory(i, "nvidia" if i != "host" else "host", i, i == "host", 64 * GIB,
                         64 * GIB - int(free), int(free))
            for i in ("host", "nvidia:0", "nvidia:1", "nvidia:2")]


def accuracy() -> None:
    print("noise (MiB)  minutes of history  error vs truth  confidence")
    for noise in (0, 50, 200, 600):
        for minutes in (1, 3, 5):
            tracker, rng, free, t = PoolTracker(), random.Random(7), 40 * GIB, 0.0
            for _ in range(int(minutes * 30)):
                t += 2.0
                free -= 300 * MIB / 30
                tracker.observe(pools(free + rng.gauss(0, noise * MIB))[:1], t)
            f = tracker.forecast("host")
            truth = free / (300 * MIB) * 60
            err = "none" if f.seconds_left is None else f"{(f.seconds_left / truth - 1):+.1%}"
            print(f"{noise:>11}  {minutes:>18}  {err:>14}  {f.confidence:>10.2f}")


def cost() -> None:
    tracker, free, t = PoolTracker(), 40 * GIB, 0.0
    n = 20000
    start = time.perf_counter()
    for _ in range(n):
        t += 1.0
        free -= 5 * MIB
        devs = pools(free)
        tracker.observe(devs, t)
        tracker.forecasts(devs)
    per = (time.perf_counter() - start) / n
    print(f"observe + forecast of 4 pools: {per * 1e6:.0f} us per poll "
          f"({n} polls of 1 s = {n / 3600:.1f} h); points kept per pool: "
          f"{tracker.points('host')}")


if __name__ == "__main__":
    accuracy()
    cost()
