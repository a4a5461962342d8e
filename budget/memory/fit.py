"""``--fit``: the context common/fit.cpp hands to llama_context when ``-c`` is not given."""

from __future__ import annotations

from dataclasses import dataclass

from kvwall.budget.config import ServerConfig
from kvwall.budget.memory.alloc import Alloc, allocate
from kvwall.budget.memory.layout import Layout
from kvwall.budget.memory.resolve import Resolved
from kvwall.budget.units import format_whole_mib
from kvwall.monitors.gguf import ModelInfo

MiB = 1024 * 1024


@dataclass(frozen=True)
class FitChoice:
    """The context ``--fit`` picks, and why, in the user's words."""

    n_ctx: int
    note: str


def _fit_total(alloc: Alloc, rv: Resolved) -> int:
    """What common/fit.cpp compares: model+context+compute of the devices (host row on CPU)."""
    if rv.gpu_names and rv.n_gpu_layers > 0:
        return sum(alloc.device_total(name) for name in rv.gpu_names)
    return alloc.device_total("Host")


def _fit_margin(config: ServerConfig, rv: Resolved) -> int:
    """``-fitt`` in bytes over all devices: one value is broadcast to every device; a list
    sets the first devices and leaves the others at the default 1024 MiB (common/arg.cpp)."""
    targets = config.fit_target_mib or (1024,)
    n_dev = max(1, len(rv.gpu_names))
    per_device = [targets[0]] * n_dev if len(targets) == 1 else (list(targets) + [1024] * n_dev)[:n_dev]
    return sum(per_device) * MiB


def fit_context(
    model: ModelInfo,
    config: ServerConfig,
    rv: Resolved,
    lay: Layout,
    free_bytes: int | None,
) -> FitChoice:
    """common_params_fit_impl steps 1-2: the context ``--fit`` hands to llama_context.

    Args:
        model: the GGUF header.
        config: the parsed command line (``-c`` not given, or 0).
        rv: the resolved configuration, refusals applied.
        lay: the model's layout.
        free_bytes: the memory fit compares against; None = assume the full context fits.
    """
    n_streams = rv.n_stream
    n_ctx_max = model.n_ctx_train * n_streams
    if config.n_ctx == 0:
        return FitChoice(
            n_ctx_max,
            f"-c 0: the full trained context ({model.n_ctx_train} per stream) is used; "
            "--fit does not shrink it",
        )
    if free_bytes is None:
        return FitChoice(
            n_ctx_max,
            f"-c not given: --fit would pick the context from free memory; assumed the full "
            f"trained context fits ({model.n_ctx_train} cells"
            + (f" x {n_streams} streams" if n_streams > 1 else "")
            + ")",
        )
    margin = _fit_margin(config, rv)
    used_max = _fit_total(allocate(model, config, rv, lay, n_ctx_max), rv)
    where = "GPU memory" if rv.gpu_names else "host memory"
    if free_bytes - used_max >= margin:
        return FitChoice(
            n_ctx_max,
            f"-c not given: --fit keeps the full trained context ({n_ctx_max} cells): it leaves "
            f"{format_whole_mib(free_bytes - used_max)} of {format_whole_mib(free_bytes)} {where} free",
        )
    n_ctx_min = config.fit_ctx * n_streams
    if n_ctx_max <= n_ctx_min:
        return FitChoice(
            n_ctx_max, f"-c not given: the trained context ({n_ctx_max}) is already at the --fit minimum"
        )
    used_min = _fit_total(allocate(model, config, rv, lay, n_ctx_min), rv)
    target = free_bytes - margin
    if target > used_min and used_max > used_min:
        n_ctx = n_ctx_min + (n_ctx_max - n_ctx_min) * (target - used_min) // (used_max - used_min)
        align = 256 * n_streams
        n_ctx = max(n_ctx - n_ctx % align, n_ctx_min)
        return FitChoice(
            n_ctx,
            f"-c not given: --fit shrinks the context from {n_ctx_max} to {n_ctx} cells to keep "
            f"{format_whole_mib(margin)} of {format_whole_mib(free_bytes)} {where} free",
        )
    return FitChoice(
        n_ctx_min,
        f"-c not given: even the --fit minimum ({n_ctx_min} cells) does not leave {format_whole_mib(margin)} "
        f"of {format_whole_mib(free_bytes)} {where} free; llama-server would "
        + ("try moving layers to the CPU" if rv.gpu_names else "start anyway and may run out of memory"),
    )
