"""Real StatusReport objects for GUI tests (frozen dataclasses, not mocks)."""

from __future__ import annotations

from kvwall.budget.memory import DeviceBudget, MemoryPlan
from kvwall.budget.report import (
    Advice,
    Attribution,
    Forecast,
    ServerReport,
    SlotReport,
    StatusReport,
)
from kvwall.monitors.snapshot import DeviceMemory, ProcessMemory

GiB = 1024**3
MiB = 1024**2


def plan(weights=4 * GiB, kv=2 * GiB, compute=300 * MiB, n_ctx=32768, n_seq=2,
         unified=False, ctk="f16", ctv="f16") -> MemoryPlan:
    total = weights + kv + compute
    return MemoryPlan(
        n_ctx=n_ctx, n_ctx_seq=n_ctx if unified else n_ctx // n_seq,
        n_ctx_slot=n_ctx if unified else n_ctx // n_seq, n_seq=n_seq,
        n_stream=1 if unified else n_seq, kv_unified=unified, cache_type_k=ctk,
        cache_type_v=ctv, flash_attn="auto", n_ubatch=512, weights_bytes=weights,
        kv_bytes=kv, kv_k_bytes=kv // 2, kv_v_bytes=kv - kv // 2, kv_swa_bytes=0,
        recurrent_bytes=0, compute_bytes=compute, output_bytes=0, cache_ram_bytes=0,
        total_bytes=total, kv_bytes_per_cell=kv / n_ctx,
        devices=(DeviceBudget("CUDA0", False, weights, kv, 0, compute, 0, total),),
        assumptions=(), errors=())


def slot(id=0, n_ctx=16384, tokens=4000, turns_left=None, seconds_left=None, per_turn=None,
         processing=False) -> SlotReport:
    return SlotReport(id, n_ctx, tokens, processing,
                      Forecast(tokens_per_turn=per_turn, turns_left=turns_left,
                               seconds_left=seconds_left,
                               confidence=0.8 if per_turn else 0.0,
                               turns_seen=4 if per_turn else 0))


def server(key="pid:100", name="qwen3-32b", slots=(), device="nvidia:0",
           measured=7 * GiB, weights=4 * GiB, kv=2 * GiB, compute=300 * MiB, overhead=None,
           health="ok", advice=(), the_plan="default", url="http://127.0.0.1:8080",
           unattributed=0, pool=None, label="") -> ServerReport:
    if overhead is None:
        overhead = measured - weights - kv - compute - unattributed
    if the_plan == "default":
        the_plan = plan(weights, kv, compute)
    return ServerReport(
        key=key, pid=int(key.split(":")[1]) if key.startswith("pid:") else None, url=url,
        name=name, model_path=f"/models/{name}.gguf", health=health, plan=the_plan,
        memory=(Attribution(device, measured, weights, kv, compute, overhead, unattributed),),
        slots=tuple(slots), pool=pool, max_ctx={"f16": 40960}, more_servers_fit=0,
        advice=tuple(advice), errors=(), label=label)


def device(id="nvidia:0", total=24 * GiB, used=20 * GiB, name="NVIDIA RTX 4090",
           kind="nvidia") -> DeviceMemory:
    return DeviceMemory(id, kind, name, kind == "host", total, used,
                        None if used is None else total - used)


def report(servers=(), devices=None, t=1000.0, wall=1_760_000_000.0) -> StatusReport:
    if devices is None:
        devices = (device(),)
    return StatusReport(t, wall, tuple(devices), tuple(servers))


def advice(title="Use a q8_0 KV cache", saves=1 * GiB) -> Advice:
    return Advice("cache-q8_0", title, saves, 65536, "llama-server -m m.gguf -ctk q8_0 -ctv q8_0",
                  "halves KV, negligible quality cost")


def whatif_result(model_path: str, flags=("-c", "8192", "-np", "2"), tokens=(3000, 900),
                  per_turn=700.0, key="pid:100", url="http://127.0.0.1:8080",
                  budget=64 * MiB):
    """A server planned from a real GGUF file and command line, with its what-if inputs:
    ``(ServerReport, WhatIfInputs)``, as the poll thread delivers them."""
    from kvwall.budget.cmdline.parse import parse_command_line
    from kvwall.budget.memory import plan_memory
    from kvwall.monitors.gguf import read_model
    from kvwall.widgets.viewmodels.whatif_inputs import WhatIfInputs

    model = read_model(model_path)
    config = parse_command_line(["llama-server", "-m", model_path, "--port",
                                 url.rsplit(":", 1)[-1], *flags])
    the_plan = plan_memory(model, config)
    slots = [slot(i, the_plan.n_ctx_seq, tokens[i % len(tokens)], per_turn=per_turn,
                  turns_left=max(1, (the_plan.n_ctx_seq - tokens[i % len(tokens)]) // per_turn),
                  seconds_left=600.0 if i == 0 else None, processing=i == 0)
             for i in range(the_plan.n_seq)]
    srv = server(key=key, name=model_path.rsplit("/", 1)[-1].removesuffix(".gguf"),
                 slots=slots, the_plan=the_plan, weights=the_plan.weights_bytes,
                 kv=the_plan.kv_bytes, compute=the_plan.compute_bytes,
                 measured=the_plan.total_bytes + MiB, device="host", url=url,
                 label=f"{model_path.rsplit('/', 1)[-1].removesuffix('.gguf')}:"
                       f"{url.rsplit(':', 1)[-1]}")
    return srv, WhatIfInputs(srv.key, model, config, budget)


class FakeClock:
    """A clock the test moves by setting ``t`` (seconds)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def one_slot_report(turns_left, tokens=10000, t=0.0, health="ok", advice=()) -> StatusReport:
    """One server with one 16,384-cell slot on a 24 GiB GPU half in use."""
    s = slot(0, n_ctx=16384, tokens=tokens, turns_left=turns_left, per_turn=800.0)
    srv = server(slots=[s], health=health, advice=advice)
    dev = device(total=24 * GiB, used=12 * GiB)
    return report([srv], [dev], t=t)


def gpu_used_by(used_by: dict[int, int], total=24 * GiB) -> DeviceMemory:
    """A GPU whose per-process use is ``used_by`` (pid -> bytes); pid 100 is the server."""
    procs = tuple(ProcessMemory(pid, b, "llama-server" if pid == 100 else "python")
                  for pid, b in used_by.items())
    used = sum(used_by.values())
    return DeviceMemory("nvidia:0", "nvidia", "NVIDIA RTX 4090", False, total, used,
                        total - used, procs)
