"""llama.cpp's memory model: what a llama-server allocates, where, to the byte.

INTERFACE (frozen; implementation in progress).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvwall.budget.config import ServerConfig
from kvwall.monitors.gguf import ModelInfo


@dataclass(frozen=True)
class DeviceBudget:
    """What one backend device (or the host) will hold for one server.

    Attributes:
        name: llama.cpp's device/buffer name: ``CUDA0``, ``ROCm0``, ``Vulkan0``, ``MTL0``,
            or ``Host`` (CPU memory: CPU/CPU_Mapped/CPU_REPACK buffers).
        is_host: True for the host row.
        weights_bytes, kv_bytes, recurrent_bytes, compute_bytes: as llama.cpp's buffers.
        output_bytes: host output (logits) buffer; Host row only.
        total_bytes: the sum of the above.
    """

    name: str
    is_host: bool
    weights_bytes: int
    kv_bytes: int
    recurrent_bytes: int
    compute_bytes: int
    output_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    """The predicted allocation of one llama-server.

    When ``errors`` is non-empty, llama.cpp would refuse the configuration: the byte
    fields are 0 and ``devices`` is empty.

    Attributes:
        n_ctx: total KV cells after padding (llama.cpp's ``n_ctx``).
        n_ctx_seq: cells one slot may use (llama.cpp's ``n_ctx_seq``).
        n_ctx_slot: the per-slot context the server reports (capped to n_ctx_train).
        n_seq: slot count (``n_seq_max``); n_stream: KV streams (1 when unified).
        kv_unified: unified KV pool.
        cache_type_k, cache_type_v: the cache types.
        flash_attn: the requested mode after forcing (``on``/``off``/``auto``).
        n_ubatch: effective micro-batch.
        weights_bytes: all tensor data the server loads.
        kv_bytes: kv_k_bytes + kv_v_bytes (all attention layers incl. SWA).
        kv_swa_bytes: the part of kv_bytes in SWA layers.
        recurrent_bytes: recurrent/SSM state (f32, R + S).
        compute_bytes: estimated compute buffers, all devices.
        output_bytes: host output (logits) buffer.
        cache_ram_bytes: the prompt-cache ceiling in host RAM (0 = off, -1 = unlimited).
        total_bytes: weights + kv + recurrent + compute + output (not cache_ram).
        kv_bytes_per_cell: KV bytes one more cell of every stream costs (for what-ifs).
        devices: per-device split.
        assumptions: defaults and guesses that affected the result, in the user's words.
        errors: llama.cpp's reasons for refusing the configuration.
    """

    n_ctx: int
    n_ctx_seq: int
    n_ctx_slot: int
    n_seq: int
    n_stream: int
    kv_unified: bool
    cache_type_k: str
    cache_type_v: str
    flash_attn: str
    n_ubatch: int
    weights_bytes: int
    kv_bytes: int
    kv_k_bytes: int
    kv_v_bytes: int
    kv_swa_bytes: int
    recurrent_bytes: int
    compute_bytes: int
    output_bytes: int
    cache_ram_bytes: int
    total_bytes: int
    kv_bytes_per_cell: float
    devices: tuple[DeviceBudget, ...]
    assumptions: tuple[str, ...]
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def plan_memory(
    model: ModelInfo,
    config: ServerConfig,
    *,
    gpu_names: Sequence[str] = (),
    free_bytes: int | None = None,
) -> MemoryPlan:
    """Predict what llama-server allocates for ``model`` run with ``config``.

    Args:
        model: the GGUF header.
        config: the parsed command line.
        gpu_names: llama.cpp device names the server will offload to (``("CUDA0",)``);
            empty for a CPU-only build/machine (everything lands in ``Host``).
        free_bytes: free memory the ``--fit`` logic would see (used only when ``-c`` is
            unset and fit is on); None = assume the full trained context fits.

    Returns:
        The plan; refused configurations carry ``errors`` instead of numbers.
    """
    raise NotImplementedError


def max_context(
    model: ModelInfo,
    config: ServerConfig,
    memory_bytes: int,
    *,
    gpu_names: Sequence[str] = (),
) -> int:
    """The largest ``-c`` (multiple of 256 per stream) whose plan's total fits in
    ``memory_bytes``; 0 when even the smallest context does not fit."""
    raise NotImplementedError


@dataclass(frozen=True)
class WhatIf:
    """One simulated change to a server's configuration.

    Attributes:
        label: e.g. ``"q8_0 cache"``, ``"2 slots"``, ``"q4_0 cache, 2 slots"``.
        changes: ServerConfig field changes applied.
        config: the changed configuration.
        plan: its memory plan (``plan.errors`` set when llama.cpp would refuse it).
        saves_bytes: current total minus new total (negative = costs more).
        max_ctx: largest ``-c`` that fits in the memory budget with this change.
        command: the exact llama-server command line (user's argv edited).
        caveat: the quality/speed trade-off, one sentence.
    """

    label: str
    changes: dict
    config: ServerConfig
    plan: MemoryPlan
    saves_bytes: int
    max_ctx: int
    command: str
    caveat: str

    @property
    def refused(self) -> bool:
        return bool(self.plan.errors)


def simulate(
    model: ModelInfo,
    config: ServerConfig,
    changes: dict,
    *,
    memory_bytes: int,
    gpu_names: Sequence[str] = (),
    label: str | None = None,
) -> WhatIf:
    """Apply ``changes`` (ServerConfig field names) and predict the result.

    The current context is kept as an explicit ``-c`` (so the comparison is fair and
    the command reproduces it) unless ``changes`` sets ``n_ctx``.
    """
    raise NotImplementedError


def what_if_table(
    model: ModelInfo,
    config: ServerConfig,
    *,
    memory_bytes: int,
    gpu_names: Sequence[str] = (),
    extra_cache_types: Sequence[str] = (),
) -> list[WhatIf]:
    """The standard what-if grid: cache types f16/q8_0/q4_0 (+ extras) crossed with the
    current slot count and fewer slots (half, one fewer, one)."""
    raise NotImplementedError
