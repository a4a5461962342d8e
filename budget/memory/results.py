"""What the memory model predicts: one row per device and the plan of one server."""

from __future__ import annotations

from dataclasses import dataclass


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
class Placement:
    """Where llama-server puts the layers, after ``--fit``.

    Attributes:
        n_gpu_layers: layers offloaded (the output layer counts), as ``-ngl`` would say.
        layers: (device, layers) in model order, ``Host`` last (the CPU's layers).
        cpu_expert_layers: layers on a GPU whose expert tensors stay on the host.
        fit: what ``--fit`` did: ``off``, ``unchanged``, ``context``, ``layers``, ``failed``
            (it gave up; the command's own placement is loaded), ``not_simulated``
            (the device memory is unknown).
        summary: "llama-server will start with ..." when ``--fit`` moved anything, else "".
        pinned: ServerConfig changes that reproduce the placement without ``--fit``
            (``n_gpu_layers``, ``tensor_split``, ``override_tensor``); empty when ``--fit``
            moved nothing.
    """

    n_gpu_layers: int
    layers: tuple[tuple[str, int], ...]
    cpu_expert_layers: tuple[int, ...]
    fit: str
    summary: str
    pinned: tuple[tuple[str, object], ...] = ()


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
        kv_cells_swa: cells per stream of the SWA cache (0 without SWA layers).
        kv_layers: layers that own a KV cache (as llama.cpp's "layers" count, SWA included).
        flash_attn_effective: whether attention runs with flash attention (after ``auto``).
        n_rs_seq: extra recurrent rows per sequence (speculative rollback).
        placement: where the layers go (None for a refused plan).
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
    kv_cells_swa: int = 0
    kv_layers: int = 0
    flash_attn_effective: bool = True
    n_rs_seq: int = 0
    placement: Placement | None = None

    @property
    def ok(self) -> bool:
        """True when llama.cpp would accept the configuration."""
        return not self.errors
