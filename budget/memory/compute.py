"""Compute buffers: an estimate calibrated against llama-server's sched_reserve lines."""

from __future__ import annotations

from dataclasses import dataclass

from kvwall.budget.memory.layout import Layout, head_k
from kvwall.budget.memory.resolve import Context, Resolved
from kvwall.monitors.gguf import ModelInfo

_F32 = 4


def _mask_bytes(lay: Layout, n_kv: int, cells_swa: int, n_tok: int, fa: bool) -> int:
    """The persistent KQ masks: f16 with flash attention, f32 without."""
    mask_el = 2 if fa else 4
    mask = 0
    if lay.kv_layers:
        if not all(lay.swa):
            mask += n_kv * n_tok * mask_el
        if lay.has_swa_cache:
            mask += cells_swa * n_tok * mask_el
    return mask


def _attention_bytes(model: ModelInfo, lay: Layout, n_kv: int, cells_swa: int, n_tok: int, fa: bool) -> int:
    """One attention layer's working set (plus the f32 KQ matrix without flash attention)."""
    if not lay.kv_layers:
        return 0
    n_head = max(model.n_head or (0,))
    q = 0
    kv = 0
    for il, kw, vw in zip(lay.kv_layers, lay.k_width, lay.v_width, strict=True):
        heads = model.n_head[il] if il < len(model.n_head) else n_head
        q = max(q, heads * head_k(model, il))
        kv = max(kv, kw + (model.kv_lora_rank if lay.is_mla else vw))
    attn = (2 * q + kv + 3 * model.n_embd + 128) * n_tok * _F32
    if not fa:
        full_kv = n_kv if not all(lay.swa) else cells_swa
        attn += full_kv * n_tok * n_head * _F32
    return attn


def _ffn_bytes(model: ModelInfo, n_tok: int) -> int:
    """One feed-forward layer's working set (MoE: the used experts' width)."""
    n_embd = model.n_embd
    n_ff = max(model.n_ff or (0,))
    if model.n_expert_used:
        n_ff = max(n_ff, _n_ff_exp(model) * model.n_expert_used)
    # ggml-alloc reuses the freed norm/attention blocks when the FFN is narrow
    return (3 * n_ff + (3 if n_ff <= 2 * n_embd else 5) * n_embd) * n_tok * _F32 if n_ff else 0


def _recurrent_bytes(model: ModelInfo, lay: Layout, n_tok: int) -> int:
    """One recurrent layer's working set."""
    if not lay.recurrent_layers:
        return 0
    if model.shortconv_l_cache:  # LFM2 short-conv blocks: in_proj (3*n_embd) and gating
        return 11 * model.n_embd * n_tok * _F32
    return int(7.5 * model.ssm_d_inner * n_tok * _F32)


def compute_buffers(
    model: ModelInfo, rv: Resolved, lay: Layout, ctx: Context, cells_swa: int, offload: GpuOffload
) -> dict[str, int]:
    """Estimated ``sched_reserve`` compute buffer per device.

    The worst-case graph is a full micro-batch of ``T = min(n_ctx, n_ubatch)`` tokens
    attending to every cell of a stream; ggml-alloc reuses memory between layers, so the
    peak is the persistent inputs (KQ masks: f16 with flash attention, f32 without) plus
    one layer's working set, plus the logits of the rows the server reserves
    (``n_parallel``). The per-token working sets (in f32 values) were fitted to
    llama-server's ``compute buffer size`` lines on the CPU backend:

    - attention: ``2*q + (k + v) + 3*n_embd + 128`` (q, k, v = widest Q/K/V rows);
      without flash attention add the f32 ``KQ`` matrix, ``n_kv*T*n_head*4`` bytes;
    - feed-forward: ``3*n_ff + 5*n_embd`` (``3*n_embd`` when ``n_ff <= 2*n_embd``; MoE:
      ``n_ff = n_ff_exp * n_expert_used``);
    - recurrent (SSM) layers: ``7.5*d_inner``; LFM2 short-conv layers: ``11*n_embd``.

    Args:
        model: the GGUF header.
        rv: the resolved configuration.
        lay: the model's layout.
        ctx: the context sizes.
        cells_swa: cells per stream of the SWA cache.
        offload: how the graph spreads over the GPUs (ignored without GPUs).

    Returns:
        Bytes per device name (``Host`` included when offloading).
    """
    n_tok = min(ctx.n_ctx, ctx.n_ubatch)
    n_kv = ctx.n_ctx_seq  # per stream: the whole cache is visible in the reserve graph
    n_embd = model.n_embd
    fa = rv.fa_effective
    mask = _mask_bytes(lay, n_kv, cells_swa, n_tok, fa)
    attn = _attention_bytes(model, lay, n_kv, cells_swa, n_tok, fa)
    ffn = _ffn_bytes(model, n_tok)
    rec = _recurrent_bytes(model, lay, n_tok)
    n_out = min(n_tok, rv.n_seq)
    logits = model.n_vocab * n_out * _F32
    peak = mask + max(attn, ffn, rec, n_embd * n_tok * _F32) + logits
    if not rv.gpu_names:
        return {"Host": int(peak)}
    peaks = _GpuPeaks(*_gpu_phases(model, lay, n_kv, n_tok, fa), fixed=mask + logits)
    return _with_gpus(rv, n_embd * n_tok, mask, peaks, offload)


@dataclass(frozen=True)
class _GpuPeaks:
    """One layer's working sets on a GPU backend, by phase, and the persistent inputs."""

    attn: int
    ffn: int
    other: int
    fixed: int

    def peak(self, offload: GpuOffload | None = None) -> int:
        """The peak; with ``offload``, the first GPU also holds copies of what it runs for
        the host: a cache layer during attention, a weight during the feed-forward."""
        kv = offload.host_kv if offload else 0
        weight = offload.host_weights if offload else 0
        return self.fixed + max(self.attn + kv, self.ffn + weight, self.other)


def _gpu_phases(model: ModelInfo, lay: Layout, n_kv: int, n_tok: int, fa: bool) -> tuple[int, int, int]:
    """One layer's working sets on a GPU backend (fitted to Vulkan's ``sched_reserve``):
    attention ``2*q + (k + v) + 3*n_embd`` values a token (plus the f32 KQ without flash
    attention), feed-forward ``4*n_ff`` (MoE: ``4 * n_ff_exp * n_expert_used``)."""
    attn = _attention_bytes(model, lay, n_kv, 0, n_tok, fa) - 128 * n_tok * _F32 if lay.kv_layers else 0
    n_ff = max(model.n_ff or (0,))
    if model.n_expert_used:
        n_ff = _n_ff_exp(model) * model.n_expert_used
    ffn = 4 * n_ff * n_tok * _F32
    rec = _recurrent_bytes(model, lay, n_tok)
    if lay.recurrent_layers and model.shortconv_l_cache:
        rec = 8 * model.n_embd * n_tok * _F32  # LFM2's short-conv blocks on Vulkan
    return attn, ffn, max(rec, model.n_embd * n_tok * _F32)


@dataclass(frozen=True)
class GpuOffload:
    """How the scheduler spreads one graph over the GPUs (what sizes their buffers).

    Attributes:
        layer_devices: the GPUs holding layers (the output layer included).
        host_weights: the largest weight tensor on the host outside the input layer; 0
            when every layer's weights are on a GPU. Batches of 32 tokens or more run such
            weights on the first GPU (``--op-offload``), copied into its compute buffer.
        pipeline: pipeline parallelism (several GPUs, every layer and the KV offloaded,
            ``-sm layer``, no tensor overrides): the scheduler keeps 4 copies of the inputs.
        host_kv: K + V of the largest layer whose cache is on the host (its attention
            then runs on the first GPU on a copy); 0 when every cache is on a GPU.
    """

    layer_devices: frozenset[str]
    host_weights: int
    pipeline: bool
    host_kv: int = 0


_PIPELINE_COPIES = 4  # GGML_SCHED_MAX_COPIES


def _with_gpus(rv: Resolved, embd_tok: int, mask: int, peaks: _GpuPeaks, offload: GpuOffload) -> dict[str, int]:
    """Compute buffers with GPUs: one per GPU that runs part of the graph, and the CPU
    backend's in pinned host memory (``Vulkan_Host``, ``CUDA_Host``).

    Fitted to the b11434 Vulkan backend's ``sched_reserve`` lines (docs/llamacpp-notes.md):
    the host holds the staged inputs, ``mask + 16 x n_embd x T`` bytes with flash attention
    (``20 x`` without); with pipeline parallelism four copies of the mask and ``40 x``
    (``56 x``). Each GPU with layers holds the one-layer peak (plus three more mask copies
    under pipeline parallelism, and on the first GPU the staged activations it passes on);
    the first GPU also runs the host layers' batches (``--op-offload``) on copies of their
    weights and caches.
    """
    copies = _PIPELINE_COPIES if offload.pipeline else 1
    per_tok = (40 if rv.fa_effective else 56) if offload.pipeline else (16 if rv.fa_effective else 20)
    out: dict[str, int] = {}
    first = rv.gpu_names[0]
    for name in rv.gpu_names:
        runs_host_work = name == first and (offload.host_weights or offload.host_kv)
        if name not in offload.layer_devices and not runs_host_work:
            continue
        size = peaks.peak(offload if runs_host_work else None) + (copies - 1) * mask
        if name == first and offload.pipeline:
            size += 48 * embd_tok
        out[name] = size
    out["Host"] = copies * mask + per_tok * embd_tok
    return out


def _n_ff_exp(model: ModelInfo) -> int:
    for t in model.tensors:
        if "ffn_up_exps" in t.name or "ffn_gate_exps" in t.name:
            return int(t.shape[1]) if len(t.shape) > 1 else 0
    return 0
