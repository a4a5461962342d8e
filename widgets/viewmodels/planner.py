"""The GUI planner's view model: read a GGUF file, plan it as ``kvwall plan`` does, and
render the plan and its what-if table as HTML (Qt-free; file I/O: run it off the GUI thread).
"""

from __future__ import annotations

import html
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvwall.budget.units import format_bytes, sanitize

if TYPE_CHECKING:  # the memory model and the GGUF reader (numpy) load on first use
    from kvwall.budget.memory import MemoryPlan
    from kvwall.budget.whatif import WhatIf
    from kvwall.monitors.gguf import ModelInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanOutcome:
    """What planning a model gave: the plan and its what-if table, or an error."""

    path: str
    flags: str
    html: str
    error: str | None = None


@dataclass(frozen=True)
class _Planned:
    """A model read and planned: what :func:`_render` turns into HTML."""

    model: ModelInfo
    plan: MemoryPlan
    table: Sequence[WhatIf]
    offload: Sequence[WhatIf] = ()


def plan_html(path: str, flags: str, memory_bytes: int | None,
              gpu_names: Sequence[str] = ()) -> PlanOutcome:
    """Read the model and plan it (file I/O: call it off the GUI thread).

    Args:
        path: the GGUF file (the first file of a split model).
        flags: llama-server flags as the user typed them, e.g. ``-c 32768 -np 2``.
        memory_bytes: free memory to fit into (on the GPUs, with ``gpu_names``); None
            or 0 skips the what-if tables.
        gpu_names: llama.cpp devices to plan for (``("CUDA0",)``), sharing
            ``memory_bytes`` equally; empty plans a CPU-only server. With GPUs the page
            adds the offload rows of ``kvwall plan``.

    Returns:
        The HTML page, or an error message in the user's words; never raises.
    """
    from kvwall.budget.config import ConfigError
    from kvwall.monitors.gguf import GGUFError

    try:
        planned = _plan(path, flags, memory_bytes, tuple(gpu_names))
    except (GGUFError, ConfigError, ValueError, OSError) as exc:
        return PlanOutcome(path, flags, "", sanitize(str(exc)))
    except Exception as exc:  # never a traceback to the user
        log.exception("planning %s failed", path)
        return PlanOutcome(path, flags, "", f"kvwall could not plan this model: {exc}")
    return PlanOutcome(path, flags, _render(path, planned, memory_bytes))


def _plan(path: str, flags: str, memory_bytes: int | None, gpu_names: tuple[str, ...]) -> _Planned:
    from kvwall.budget.cmdline.parse import parse_command_line
    from kvwall.budget.memory import check_command_line, check_model_file, plan_memory
    from kvwall.budget.whatif import offload_table, what_if_table
    from kvwall.monitors.gguf import read_model

    extra = shlex.split(flags)
    config = parse_command_line(["llama-server", "-m", path, *extra])
    check_command_line(config)  # LaunchError is a ValueError: shown as the error
    model = read_model(path)
    check_model_file(model, config)
    free = ({g: memory_bytes // len(gpu_names) for g in gpu_names}
            if memory_bytes and gpu_names else None)  # as `kvwall plan --memory` splits it
    plan = plan_memory(model, config, gpu_names=gpu_names, free_bytes=memory_bytes, device_free=free)
    if not (memory_bytes and plan.ok):
        return _Planned(model, plan, [])
    table = what_if_table(model, config, memory_bytes=memory_bytes, gpu_names=gpu_names,
                          device_free=free)
    offload = offload_table(model, config, memory_bytes=memory_bytes, gpu_names=gpu_names,
                            device_free=free)
    return _Planned(model, plan, table, offload)


def _render(path: str, planned: _Planned, memory_bytes: int | None) -> str:
    e = html.escape
    model, plan = planned.model, planned.plan
    out = [f"<h3>{e(sanitize(model.name, 200))}</h3><p>{e(path)}<br>"
           f"{e(sanitize(model.architecture, 100))}, "
           f"{model.n_layer_all} layers, trained context {model.n_ctx_train:,}</p>"]
    if not plan.ok:
        out.append("<p style='color:#c62828'><b>llama.cpp would refuse this "
                   "configuration:</b><br>" + "<br>".join(e(x) for x in plan.errors) + "</p>")
        return "".join(out)
    out += _plan_table(plan)
    if plan.placement is not None and plan.placement.summary:
        out.append(f"<p>{e(plan.placement.summary)} (--fit)</p>")
    if planned.table:
        out += _what_if_table(planned.table, memory_bytes)
    if planned.offload:
        out += _offload_table(planned.offload, memory_bytes)
    if plan.assumptions:
        out.append("<h4>Assumptions</h4><ul>" + "".join(
            f"<li>{e(a)}</li>" for a in plan.assumptions) + "</ul>")
    return "".join(out)


def _plan_table(plan: MemoryPlan) -> list[str]:
    e, fb = html.escape, format_bytes
    out = [f"<p>Context {plan.n_ctx:,} cells, {plan.n_ctx_seq:,} per slot × {plan.n_seq} "
           f"slot(s){' (unified KV)' if plan.kv_unified else ''}; cache "
           f"{e(plan.cache_type_k)}/{e(plan.cache_type_v)}, flash attention "
           f"{e(plan.flash_attn)}</p>",
           "<table cellspacing=0 cellpadding=3 border=1><tr><th>Device</th><th>Weights"
           "</th><th>KV cache</th><th>Compute</th><th>Total</th></tr>"]
    for d in plan.devices:
        out.append(f"<tr><td>{e(d.name)}</td><td>{fb(d.weights_bytes)}</td><td>"
                   f"{fb(d.kv_bytes + d.recurrent_bytes)}</td><td>{fb(d.compute_bytes)}</td>"
                   f"<td><b>{fb(d.total_bytes)}</b></td></tr>")
    out.append(f"<tr><td><b>All</b></td><td>{fb(plan.weights_bytes)}</td><td>"
               f"{fb(plan.kv_bytes + plan.recurrent_bytes)}</td><td>{fb(plan.compute_bytes)}"
               f"</td><td><b>{fb(plan.total_bytes)}</b></td></tr></table>")
    return out


def _offload_table(rows: Sequence[WhatIf], memory_bytes: int | None) -> list[str]:
    """The offload rows: GPU memory freed, largest -c, speed cost, command."""
    e, fb = html.escape, format_bytes
    out = [f"<h4>Offload (largest context within {fb(memory_bytes)} of GPU memory)</h4>"
           "<table cellspacing=0 cellpadding=3 border=1><tr><th>Change</th>"
           "<th>GPU memory</th><th>Largest -c</th><th>Speed</th><th>Command</th></tr>"]
    for wi in rows:
        if wi.refused:
            out.append(f"<tr><td>{e(wi.label)}</td><td colspan=4>refused: "
                       f"{e('; '.join(wi.plan.errors))}</td></tr>")
            continue
        memory = (f"frees {fb(wi.saves_bytes)}" if wi.saves_bytes >= 0
                  else f"takes {fb(-wi.saves_bytes)} more")
        out.append(f"<tr><td>{e(wi.label)}</td><td>{memory}</td><td>{wi.max_ctx:,}</td>"
                   f"<td>{e(wi.caveat)}</td><td><code>{e(wi.command)}</code></td></tr>")
    out.append("</table>")
    return out


def _what_if_table(table: Sequence[WhatIf], memory_bytes: int | None) -> list[str]:
    e, fb = html.escape, format_bytes
    out = [f"<h4>What if (largest context within {fb(memory_bytes)} free)</h4>"
           "<table cellspacing=0 cellpadding=3 border=1><tr><th>Change</th>"
           "<th>Memory</th><th>Largest -c</th><th>Command</th></tr>"]
    for wi in table:
        if wi.refused:
            out.append(f"<tr><td>{e(wi.label)}</td><td colspan=3>refused: "
                       f"{e('; '.join(wi.plan.errors))}</td></tr>")
        else:
            memory = (f"saves {fb(wi.saves_bytes)}" if wi.saves_bytes >= 0
                      else f"costs {fb(-wi.saves_bytes)} more")  # never "saves -X"
            out.append(f"<tr><td>{e(wi.label)}</td><td>{memory}</td>"
                       f"<td>{wi.max_ctx:,}</td><td><code>{e(wi.command)}</code></td></tr>")
    out.append("</table>")
    return out
