"""llama.cpp's memory model: what a llama-server allocates, where, to the byte."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvwall.budget.config import CACHE_TYPES, ServerConfig, render_command
from kvwall.monitors.gguf import ModelInfo

MiB = 1024 * 1024

# (block size in elements, bytes per block) of the cache types (ggml/src/ggml.c type_traits;
# the same numbers as gguf.constants.GGML_QUANT_SIZES, checked by the unit tests).
TYPE_SIZES: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "iq4_nl": (32, 18),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
}
QUANTIZED = frozenset(t for t, (blck, _) in TYPE_SIZES.items() if blck > 1)

LLAMA_MAX_SEQ = 256  # src/llama-cparams.h
KV_PAD = 256  # llama_context pads n_ctx (and n_ctx_seq, the SWA cache) to 256 cells

# llama_model::create_memory: architectures without a KV cache (embeddings, diffusion).
_NO_MEMORY_ARCHS = frozenset(
    "bert jina-bert-v2 jina-bert-v3 nomic-bert nomic-bert-moe neo-bert eurobert wavtokenizer-dec "
    "modern-bert gemma-embedding dream llada llada-moe rnd1 clef".split()
)
# llm_arch_is_recurrent
_RECURRENT_ARCHS = frozenset("mamba mamba2 rwkv6 rwkv6qwen2 rwkv7 arwkv7".split())
# llm_arch_is_hybrid
_HYBRID_ARCHS = frozenset(
    "jamba falcon-h1 plamo2 granitehybrid lfm2 lfm2moe nemotron_h nemotron_h_moe qwen3next "
    "kimi-linear bailingmoe3 kimi-k3 glm5-next qwen35 qwen35moe qwen4exp deepseek4 minimax-01".split()
)
# hybrids whose attention/recurrent filters also exclude NextN layers
_HYBRID_NEXTN_FILTER = frozenset("qwen3next qwen35 qwen35moe qwen4exp minimax-01 glm5-next".split())
# llm_arch_supports_rs_rollback
_RS_ROLLBACK_ARCHS = frozenset(
    "kimi-k3 qwen35 qwen35moe qwen4exp deepseek4 glm5-next nemotron_h nemotron_h_moe lfm2 "
    "lfm2moe bailingmoe3".split()
)
# caches llama.cpp builds with extra parts this model does not describe exactly
_SPECIAL_CACHE_ARCHS = {
    "deepseek32": "an extra lightning-indexer key cache (DSA)",
    "glm-dsa": "an extra lightning-indexer key cache (DSA)",
    "hy_v4": "an extra lightning-indexer key cache (DSA)",
    "dots3note": "an extra lightning-indexer key cache (DSA)",
    "minimax-m3": "an extra indexer key cache (MSA)",
    "deepseek4": "compressed caches and extra state (DSV4)",
    "glm5-next": "an extra indexer key cache",
    "qwen4exp": "an extra indexer key cache",
    "kimi-linear": "KDA recurrent state",
    "kimi-k3": "KDA recurrent state",
    "minimax-01": "linear-attention state",
}
_SPEC_TYPES_WITH_RS = ("draft-mtp", "draft-eagle3", "draft-dflash", "draft-dspark")

# common/common.h LLM_FFN_EXPS_REGEX (what -cmoe / -ncmoe keep on the CPU)
_FFN_EXPS = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
_INPUT_TENSORS = ("token_embd.", "token_types.", "position_embd.", "tok_norm.", "token_embd_norm.")
_BLK = re.compile(r"^blk\.(\d+)\.")


def pad(n: int, to: int = KV_PAD) -> int:
    """``GGML_PAD``: round ``n`` up to a multiple of ``to``."""
    return (n + to - 1) // to * to


def row_bytes(type_name: str, n_elements: int) -> int:
    """``ggml_row_size``: bytes of ``n_elements`` values of ``type_name``.

    Raises:
        KeyError: not a cache type.
    """
    blck, size = TYPE_SIZES[type_name]
    return size * n_elements // blck


# ---------------------------------------------------------------------------
# results


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
        kv_cells_swa: cells per stream of the SWA cache (0 without SWA layers).
        kv_layers: layers that own a KV cache (as llama.cpp's "layers" count, SWA included).
        flash_attn_effective: whether attention runs with flash attention (after ``auto``).
        n_rs_seq: extra recurrent rows per sequence (speculative rollback).
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

    @property
    def ok(self) -> bool:
        return not self.errors


# ---------------------------------------------------------------------------
# model structure (per layer), as llama_model::create_memory and llama_hparams see it


@dataclass(frozen=True)
class _Layout:
    """Which layers own KV and recurrent state, and how wide their rows are."""

    kv_layers: tuple[int, ...]  # layers with a K (and V) tensor
    swa: tuple[bool, ...]  # per layer of kv_layers: lives in the SWA cache
    k_width: tuple[int, ...]  # n_embd_k_gqa per kv layer
    v_width: tuple[int, ...]  # n_embd_v_gqa per kv layer
    v_width_max: int  # n_embd_v_gqa_max over all layers
    has_swa_cache: bool
    is_mla: bool
    recurrent_layers: tuple[int, ...]
    n_embd_r: int
    n_embd_s: int


def _is_swa(model: ModelInfo, il: int) -> bool:
    return il < len(model.swa_layers) and bool(model.swa_layers[il])


def _head_k(model: ModelInfo, il: int) -> int:
    return model.head_k_swa if _is_swa(model, il) else model.head_k


def _head_v(model: ModelInfo, il: int) -> int:
    return model.head_v_swa if _is_swa(model, il) else model.head_v


def _n_head_kv(model: ModelInfo, il: int) -> int:
    return model.n_head_kv[il] if il < len(model.n_head_kv) else 0


def _layout(model: ModelInfo) -> _Layout:
    arch = model.architecture
    n_all = model.n_layer_all
    n_main = model.n_layer
    recr = tuple(il < len(model.recurrent_layers) and bool(model.recurrent_layers[il]) for il in range(n_all))
    has_swa_cache = model.n_swa > 0 and any(_is_swa(model, il) for il in range(n_all))

    def has_kv(il: int) -> bool:
        return model.n_layer_kv_from_start < 0 or il < model.n_layer_kv_from_start

    kv: list[int] = []
    rs: list[int] = []
    if arch in _NO_MEMORY_ARCHS:
        pass
    elif arch in _RECURRENT_ARCHS:
        rs = list(range(n_main))
    elif arch in _HYBRID_ARCHS:
        if arch == "falcon-h1":
            kv = [il for il in range(n_all) if has_kv(il)]
            rs = list(range(n_main))
        elif arch in ("nemotron_h", "nemotron_h_moe"):
            n_ff = model.n_ff
            ff0 = [il >= len(n_ff) or n_ff[il] == 0 for il in range(n_all)]
            kv = [il for il in range(n_all) if has_kv(il) and not recr[il] and ff0[il]]
            rs = [il for il in range(n_main) if recr[il] and ff0[il]]
        elif arch in _HYBRID_NEXTN_FILTER:
            kv = [il for il in range(n_main) if has_kv(il) and not recr[il]]
            rs = [il for il in range(n_main) if recr[il]]
        else:
            kv = [il for il in range(n_all) if has_kv(il) and not recr[il]]
            rs = [il for il in range(n_main) if recr[il]]
    else:
        limit = n_main if (model.n_layer_nextn > 0 and n_main > 0) else n_all
        kv = [il for il in range(limit) if has_kv(il)]

    k_width = tuple(_head_k(model, il) * _n_head_kv(model, il) for il in kv)
    v_width = tuple(_head_v(model, il) * _n_head_kv(model, il) for il in kv)
    v_max = max([_head_v(model, il) * _n_head_kv(model, il) for il in range(n_all)] or [0])

    n_embd_r, n_embd_s = _recurrent_widths(model)
    return _Layout(
        kv_layers=tuple(kv),
        swa=tuple(has_swa_cache and _is_swa(model, il) for il in kv),
        k_width=k_width,
        v_width=v_width,
        v_width_max=v_max,
        has_swa_cache=has_swa_cache,
        is_mla=model.is_mla,
        recurrent_layers=tuple(rs),
        n_embd_r=n_embd_r,
        n_embd_s=n_embd_s,
    )


def _recurrent_widths(model: ModelInfo) -> tuple[int, int]:
    """``llama_hparams::n_embd_r`` / ``n_embd_s`` (values per sequence and layer)."""
    if model.wkv_head_size:
        return model.token_shift_count * model.n_embd, model.n_embd * model.wkv_head_size
    if model.shortconv_l_cache:
        return model.n_embd * (model.shortconv_l_cache - 1), model.ssm_d_state * model.ssm_d_inner
    d_conv = model.ssm_d_conv - 1 if model.ssm_d_conv > 0 else 0
    n_r = d_conv * (model.ssm_d_inner + 2 * model.ssm_n_group * model.ssm_d_state)
    return n_r, model.ssm_d_state * model.ssm_d_inner


# ---------------------------------------------------------------------------
# configuration resolution (server.cpp, common/fit.cpp, llama_context)


@dataclass
class _Resolved:
    n_seq: int
    unified: bool
    n_stream: int
    n_ctx_req: int  # what llama_context receives (after fit / per-slot sizing), 0 = n_ctx_train
    fa: str  # requested after forcing: on/off/auto
    fa_effective: bool
    n_rs_seq: int
    n_gpu_layers: int  # resolved count incl. output layer
    gpu_names: tuple[str, ...]
    splits: tuple[float, ...] = ()  # -ts shares per GPU; empty = equal shares
    assumptions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Context:
    n_ctx: int
    n_ctx_seq: int
    n_batch: int
    n_ubatch: int


def _context(model: ModelInfo, config: ServerConfig, rv: _Resolved, n_ctx_req: int) -> _Context:
    n_ctx = n_ctx_req if n_ctx_req > 0 else model.n_ctx_train
    n_batch = min(n_ctx, config.n_batch)  # causal attention: the batch is limited by the context
    n_ubatch = min(n_batch, config.n_ubatch if config.n_ubatch else n_batch)
    n_ctx = pad(n_ctx)
    if rv.unified:
        n_ctx_seq = n_ctx
    else:
        n_ctx_seq = pad(n_ctx // rv.n_seq)
        n_ctx = n_ctx_seq * rv.n_seq
    return _Context(n_ctx, n_ctx_seq, n_batch, n_ubatch)


def _refusals(model: ModelInfo, config: ServerConfig, rv: _Resolved) -> None:
    """llama_init_from_model's checks, in its order, with its messages."""
    tk, tv = config.cache_type_k, config.cache_type_v
    if config.split_mode == "tensor":  # llama_prepare_model_devices, at model load
        if not rv.gpu_names:
            rv.errors.append("LLAMA_SPLIT_MODE_TENSOR needs >= 1 devices")
            return
    if config.n_batch == 0 and config.n_ubatch == 0:
        rv.errors.append("n_batch and n_ubatch cannot both be zero")
        return
    if model.n_ctx_train == 0 and rv.n_ctx_req == 0:
        rv.errors.append("n_ctx and model->hparams.n_ctx_train cannot both be zero")
        return
    if config.split_mode == "tensor":
        if rv.fa == "auto":
            rv.fa = "on"
            rv.assumptions.append("flash attention switched on: llama.cpp requires it for -sm tensor")
        elif rv.fa == "off":
            rv.errors.append("SPLIT_MODE_TENSOR requires flash_attn to be enabled")
            return
    if (model.is_mla or model.architecture == "deepseek4") and tk != tv:
        rv.errors.append(f"model does not support different K ({tk}) and V ({tv}) cache types")
        return
    if tv in QUANTIZED and rv.fa != "on":
        if rv.fa == "auto":
            rv.fa = "on"
            rv.assumptions.append(
                f"flash attention switched on: llama.cpp requires it for the quantized V cache ({tv})"
            )
        else:
            rv.errors.append("quantized V cache requires flash_attn to be enabled")
            return
    lay = _layout(model)
    for name, type_name, widths in (("K", tk, lay.k_width), ("V", tv, () if lay.is_mla else lay.v_width)):
        if type_name not in QUANTIZED or rv.fa != "off":
            continue
        blck = TYPE_SIZES[type_name][0]
        for il, width in zip(lay.kv_layers, widths, strict=False):
            if width % blck:
                rv.errors.append(
                    f"{name} cache type {type_name} needs rows that are a multiple of its block "
                    f"size ({blck}), but layer {il} has n_embd_{name.lower()}_gqa={width}: "
                    "llama.cpp aborts (GGML_ASSERT in ggml_view)"
                )
                return
    if rv.fa != "off":
        for name, type_name, sizes in (("K", tk, "k"), ("V", tv, "v")):
            if type_name not in QUANTIZED:
                continue
            blck = TYPE_SIZES[type_name][0]
            for il in range(model.n_layer):
                head = _head_k(model, il) if sizes == "k" else _head_v(model, il)
                if head % blck:
                    rv.errors.append(
                        f"{name} cache type {type_name} with block size {blck} does not divide "
                        f"n_embd_head_{sizes}={head}"
                    )
                    return
    # the llama_context constructor's checks come after llama_init_from_model's
    if rv.n_seq > LLAMA_MAX_SEQ:
        rv.errors.append(f"n_seq_max must be <= {LLAMA_MAX_SEQ}")
        return
    if config.n_batch == 0:  # n_batch = min(n_ctx, 0) = 0 -> no output rows can be reserved
        rv.errors.append(
            f"-b 0 with -ub {config.n_ubatch}: a batch of 0 tokens; llama.cpp aborts "
            "(GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max) in llama-context.cpp)"
        )


def _resolve(model: ModelInfo, config: ServerConfig, gpu_names: Sequence[str]) -> _Resolved:
    notes: list[str] = list(config.notes)
    n_seq = config.n_parallel
    if n_seq < 0:
        n_seq, unified = 4, True
        given = "not given" if "parallel" not in config.explicit else f"{config.n_parallel} (auto)"
        notes.append(f"-np {given}: 4 slots sharing one unified KV pool (llama-server default)")
    else:
        unified = bool(config.kv_unified)
    if config.kv_unified is False and config.n_parallel < 0:
        notes.append("-np auto always uses a unified KV pool; -no-kvu has no effect")
    n_stream = 1 if unified else n_seq

    fa = config.flash_attn
    if fa != "off" and model.architecture == "grok":
        fa = "off"
        notes.append("flash attention forced off: llama.cpp does not support it with Grok")

    spec = tuple(s.strip() for s in (config.spec_type or "").split(",") if s.strip())
    n_rs_seq = 0
    if any(s in _SPEC_TYPES_WITH_RS for s in spec) and model.architecture in _RS_ROLLBACK_ARCHS:
        n_rs_seq = max(0, config.spec_draft_n_max)

    gpus = tuple(gpu_names)
    splits: tuple[float, ...] = ()
    if config.split_mode == "none" and len(gpus) > 1:
        gpus = gpus[:1]
        notes.append(f"-sm none: everything on the main GPU {gpus[0]} (-mg 0)")
    elif config.split_mode == "tensor" and gpus:
        notes.append(
            "-sm tensor: weights and KV shown split by layer; llama.cpp splits each tensor across the GPUs"
        )
    if len(gpus) > 1:
        ts = tuple(config.tensor_split[: len(gpus)]) + (0.0,) * (len(gpus) - len(config.tensor_split))
        if any(ts):
            splits = ts
        else:
            notes.append(
                f"layers split evenly over {', '.join(gpus)} (llama.cpp splits by free memory "
                "when -ts is not given)"
            )
    n_all = model.n_layer_all
    ngl = config.n_gpu_layers
    if not gpus:
        n_gpu_layers = 0
    elif ngl is None or ngl < 0:
        n_gpu_layers = n_all + 1
        if ngl is None:
            notes.append("-ngl not given: all layers on the GPU (--fit may move some to the CPU)")
    else:
        n_gpu_layers = min(ngl, n_all + 1)

    rv = _Resolved(
        n_seq=n_seq,
        unified=unified,
        n_stream=n_stream,
        n_ctx_req=0,
        fa=fa,
        fa_effective=fa != "off",
        n_rs_seq=n_rs_seq,
        n_gpu_layers=n_gpu_layers,
        gpu_names=gpus,
        splits=splits,
        assumptions=notes,
    )
    return rv


# ---------------------------------------------------------------------------
# allocation


@dataclass
class _Alloc:
    ctx: _Context
    kv_cells_swa: int
    kv_k: int
    kv_v: int
    kv_swa: int
    recurrent: int
    weights: dict[str, int]
    kv: dict[str, int]
    rs: dict[str, int]
    compute: dict[str, int]
    output: int
    kv_per_cell: float

    def device_total(self, name: str) -> int:
        return (
            self.weights.get(name, 0)
            + self.kv.get(name, 0)
            + self.rs.get(name, 0)
            + self.compute.get(name, 0)
        )


def _layer_device(rv: _Resolved, model: ModelInfo, il: int) -> str:
    """llama_model::load_tensors' layer -> device rule (il == n_layer_all is the output)."""
    if not rv.gpu_names or rv.n_gpu_layers <= 0:
        return "Host"
    n_all = model.n_layer_all
    start = max(n_all + 1 - rv.n_gpu_layers, 0)
    act = min(rv.n_gpu_layers, n_all + 1)
    if il < start or il - start >= act:
        return "Host"
    # the first device whose cumulative -ts share exceeds the layer's position
    # (std::upper_bound); without -ts llama.cpp splits by free memory: equal shares here
    shares = rv.splits or (1.0,) * len(rv.gpu_names)
    total = sum(shares)
    pos = (il - start) / act
    acc = 0.0
    for name, share in zip(rv.gpu_names, shares, strict=True):
        acc += share
        if acc / total > pos:
            return name
    return rv.gpu_names[-1]


def _overrides(config: ServerConfig) -> list[tuple[re.Pattern[str], str]]:
    out: list[tuple[re.Pattern[str], str]] = []
    for item in config.override_tensor:
        pattern, _, buft = item.partition("=")
        try:
            out.append((re.compile(pattern), buft))
        except re.error:
            continue
    if config.cpu_moe:
        out.append((re.compile(_FFN_EXPS), "CPU"))
    for i in range(config.n_cpu_moe):
        out.append((re.compile(rf"blk\.{i}{_FFN_EXPS}"), "CPU"))
    return out


def _buft_device(buft: str, rv: _Resolved) -> str | None:
    upper = buft.upper()
    if upper.startswith("CPU") or upper.endswith("_HOST"):
        return "Host"
    for name in rv.gpu_names:
        if buft == name or buft.startswith(name + "_"):
            return name
    return None


def _weights(model: ModelInfo, config: ServerConfig, rv: _Resolved) -> dict[str, int]:
    out: dict[str, int] = {}
    overrides = _overrides(config) if rv.gpu_names else []
    load_mtp = "draft-mtp" in (config.spec_type or "")
    n_main = model.n_layer
    output_dev = _layer_device(rv, model, model.n_layer_all)
    has_output = False
    embd_bytes = 0
    for t in model.tensors:
        m = _BLK.match(t.name)
        if m:
            il = int(m.group(1))
            if model.n_layer_nextn > 0 and il >= n_main and not load_mtp:
                continue  # NextN/MTP layers are skipped at load unless MTP is used
            dev = _layer_device(rv, model, il) if il < model.n_layer_all else output_dev
        elif t.name.startswith(_INPUT_TENSORS):
            dev = "Host"
            if t.name.startswith("token_embd."):
                embd_bytes += t.n_bytes
        else:
            dev = output_dev
            if t.name.startswith("output.weight"):
                has_output = True
        for pattern, buft in overrides:
            if pattern.search(t.name):
                dev = _buft_device(buft, rv) or dev
                break
        out[dev] = out.get(dev, 0) + t.n_bytes
    if not has_output and output_dev != "Host" and embd_bytes:
        # tied embeddings: llama.cpp duplicates token_embd onto the output device
        out[output_dev] = out.get(output_dev, 0) + embd_bytes
    return out


def _allocate(model: ModelInfo, config: ServerConfig, rv: _Resolved, lay: _Layout, n_ctx_req: int) -> _Alloc:
    ctx = _context(model, config, rv, n_ctx_req)
    tk, tv = config.cache_type_k, config.cache_type_v
    v_trans = rv.fa == "off"  # decided before the auto probe
    cells_swa = 0
    if lay.has_swa_cache:
        swa_full = config.swa_full
        n_seq_for_swa = rv.n_seq if rv.unified else 1
        cells_swa = ctx.n_ctx_seq if swa_full else pad(
            min(ctx.n_ctx_seq, model.n_swa * n_seq_for_swa + ctx.n_ubatch)
        )
    kv_dev: dict[str, int] = {}
    kv_k = kv_v = kv_swa = 0
    per_cell = 0
    for il, swa, kw, vw in zip(lay.kv_layers, lay.swa, lay.k_width, lay.v_width, strict=True):
        cells = cells_swa if swa else ctx.n_ctx_seq
        k = rv.n_stream * cells * row_bytes(tk, kw)
        v = 0
        if not lay.is_mla:
            v = rv.n_stream * cells * row_bytes(tv, lay.v_width_max if v_trans else vw)
        if not swa:
            per_cell += rv.n_stream * (row_bytes(tk, kw) + (0 if lay.is_mla else row_bytes(tv, lay.v_width_max if v_trans else vw)))
        kv_k += k
        kv_v += v
        if swa:
            kv_swa += k + v
        dev = _layer_device(rv, model, il) if config.kv_offload else "Host"
        kv_dev[dev] = kv_dev.get(dev, 0) + k + v

    rs_dev: dict[str, int] = {}
    recurrent = 0
    rows = max(1, rv.n_seq) * (1 + rv.n_rs_seq)
    for il in lay.recurrent_layers:
        b = (lay.n_embd_r + lay.n_embd_s) * rows * 4
        recurrent += b
        dev = _layer_device(rv, model, il) if config.kv_offload else "Host"
        rs_dev[dev] = rs_dev.get(dev, 0) + b

    weights = _weights(model, config, rv)
    compute = _compute(model, config, rv, lay, ctx, cells_swa)
    # llama_context::output_reserve(n_seq_max): logits (and embeddings) for n_seq_max rows
    n_out = rv.n_seq
    output = model.n_vocab * n_out * 4
    if config.embedding:
        output += model.n_embd * n_out * 4
    return _Alloc(
        ctx=ctx,
        kv_cells_swa=cells_swa,
        kv_k=kv_k,
        kv_v=kv_v,
        kv_swa=kv_swa,
        recurrent=recurrent,
        weights=weights,
        kv=kv_dev,
        rs=rs_dev,
        compute=compute,
        output=output,
        kv_per_cell=float(per_cell),
    )


# ---------------------------------------------------------------------------
# compute buffers (estimate, calibrated against llama-server's sched_reserve lines)


def _compute(
    model: ModelInfo, config: ServerConfig, rv: _Resolved, lay: _Layout, ctx: _Context, cells_swa: int
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
    """
    n_tok = min(ctx.n_ctx, ctx.n_ubatch)
    n_kv = ctx.n_ctx_seq  # per stream: the whole cache is visible in the reserve graph
    n_embd = model.n_embd
    f32 = 4
    fa = rv.fa_effective

    mask_el = 2 if fa else 4
    mask = 0
    if lay.kv_layers:
        if not all(lay.swa):
            mask += n_kv * n_tok * mask_el
        if lay.has_swa_cache:
            mask += cells_swa * n_tok * mask_el

    n_head = max(model.n_head or (0,))
    q = 0
    kv = 0
    for il, kw, vw in zip(lay.kv_layers, lay.k_width, lay.v_width, strict=True):
        heads = model.n_head[il] if il < len(model.n_head) else n_head
        q = max(q, heads * _head_k(model, il))
        kv = max(kv, kw + (model.kv_lora_rank if lay.is_mla else vw))
    attn = (2 * q + kv + 3 * n_embd + 128) * n_tok * f32 if lay.kv_layers else 0
    if lay.kv_layers and not fa:
        full_kv = n_kv if not all(lay.swa) else cells_swa
        attn += full_kv * n_tok * n_head * f32

    n_ff = max(model.n_ff or (0,))
    if model.n_expert_used:
        n_ff = max(n_ff, _n_ff_exp(model) * model.n_expert_used)
    # ggml-alloc reuses the freed norm/attention blocks when the FFN is narrow
    ffn = (3 * n_ff + (3 if n_ff <= 2 * n_embd else 5) * n_embd) * n_tok * f32 if n_ff else 0
    rec = 0
    if lay.recurrent_layers:
        if model.shortconv_l_cache:  # LFM2 short-conv blocks: in_proj (3*n_embd) and gating
            rec = 11 * n_embd * n_tok * f32
        else:
            rec = int(7.5 * model.ssm_d_inner * n_tok * f32)

    n_out = min(n_tok, rv.n_seq)
    logits = model.n_vocab * n_out * f32
    peak = mask + max(attn, ffn, rec, n_embd * n_tok * f32) + logits
    if not rv.gpu_names or rv.n_gpu_layers <= 0:
        return {"Host": int(peak)}
    gpus = {_layer_device(rv, model, il) for il in range(model.n_layer_all + 1)} - {"Host"}
    out = {name: int(peak) for name in sorted(gpus)}
    # the CPU backend's part (input embeddings, staged inputs) sits in pinned host memory
    out["Host"] = int(n_embd * n_tok * f32 + mask)
    return out


def _n_ff_exp(model: ModelInfo) -> int:
    for t in model.tensors:
        if "ffn_up_exps" in t.name or "ffn_gate_exps" in t.name:
            return int(t.shape[1]) if len(t.shape) > 1 else 0
    return 0


# ---------------------------------------------------------------------------
# --fit


def _fit_total(alloc: _Alloc, rv: _Resolved) -> int:
    """What common/fit.cpp compares: model+context+compute of the devices (host row on CPU)."""
    if rv.gpu_names and rv.n_gpu_layers > 0:
        return sum(alloc.device_total(name) for name in rv.gpu_names)
    return alloc.device_total("Host")


def _fit_context(
    model: ModelInfo,
    config: ServerConfig,
    rv: _Resolved,
    lay: _Layout,
    free_bytes: int | None,
) -> int:
    """common_params_fit_impl step 1-2: the context --fit hands to llama_context."""
    n_streams = rv.n_stream
    n_ctx_max = model.n_ctx_train * n_streams
    if config.n_ctx == 0:
        rv.assumptions.append(
            f"-c 0: the full trained context ({model.n_ctx_train} per stream) is used; "
            "--fit does not shrink it"
        )
        return n_ctx_max
    n_ctx_min = config.fit_ctx * n_streams
    # -fitt: one value is broadcast to every device; a list sets the first devices and
    # leaves the others at the default 1024 MiB (common/arg.cpp)
    targets = config.fit_target_mib or (1024,)
    n_dev = max(1, len(rv.gpu_names))
    per_device = [targets[0]] * n_dev if len(targets) == 1 else (list(targets) + [1024] * n_dev)[:n_dev]
    margin = sum(per_device) * MiB
    if free_bytes is None:
        rv.assumptions.append(
            f"-c not given: --fit would pick the context from free memory; assumed the full "
            f"trained context fits ({model.n_ctx_train} cells"
            + (f" x {n_streams} streams" if n_streams > 1 else "")
            + ")"
        )
        return n_ctx_max
    used_max = _fit_total(_allocate(model, config, rv, lay, n_ctx_max), rv)
    where = "GPU memory" if rv.gpu_names else "host memory"
    if free_bytes - used_max >= margin:
        rv.assumptions.append(
            f"-c not given: --fit keeps the full trained context ({n_ctx_max} cells): it leaves "
            f"{_mib(free_bytes - used_max)} of {_mib(free_bytes)} {where} free"
        )
        return n_ctx_max
    if n_ctx_max <= n_ctx_min:
        rv.assumptions.append(
            f"-c not given: the trained context ({n_ctx_max}) is already at the --fit minimum"
        )
        return n_ctx_max
    used_min = _fit_total(_allocate(model, config, rv, lay, n_ctx_min), rv)
    target = free_bytes - margin
    if target > used_min and used_max > used_min:
        n_ctx = n_ctx_min + (n_ctx_max - n_ctx_min) * (target - used_min) // (used_max - used_min)
        align = 256 * n_streams
        n_ctx = max(n_ctx - n_ctx % align, n_ctx_min)
        rv.assumptions.append(
            f"-c not given: --fit shrinks the context from {n_ctx_max} to {n_ctx} cells to keep "
            f"{_mib(margin)} of {_mib(free_bytes)} {where} free"
        )
        return n_ctx
    rv.assumptions.append(
        f"-c not given: even the --fit minimum ({n_ctx_min} cells) does not leave {_mib(margin)} "
        f"of {_mib(free_bytes)} {where} free; llama-server would "
        + ("try moving layers to the CPU" if rv.gpu_names else "start anyway and may run out of memory")
    )
    return n_ctx_min


def _mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


# ---------------------------------------------------------------------------
# public API


def _empty_plan(config: ServerConfig, rv: _Resolved, ctx: _Context | None) -> MemoryPlan:
    return MemoryPlan(
        n_ctx=ctx.n_ctx if ctx else 0,
        n_ctx_seq=ctx.n_ctx_seq if ctx else 0,
        n_ctx_slot=0,
        n_seq=rv.n_seq,
        n_stream=rv.n_stream,
        kv_unified=rv.unified,
        cache_type_k=config.cache_type_k,
        cache_type_v=config.cache_type_v,
        flash_attn=rv.fa,
        n_ubatch=ctx.n_ubatch if ctx else config.n_ubatch,
        weights_bytes=0,
        kv_bytes=0,
        kv_k_bytes=0,
        kv_v_bytes=0,
        kv_swa_bytes=0,
        recurrent_bytes=0,
        compute_bytes=0,
        output_bytes=0,
        cache_ram_bytes=0,
        total_bytes=0,
        kv_bytes_per_cell=0.0,
        devices=(),
        assumptions=tuple(dict.fromkeys(rv.assumptions)),
        errors=tuple(rv.errors),
        flash_attn_effective=rv.fa != "off",
        n_rs_seq=rv.n_rs_seq,
    )


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
        free_bytes: memory the ``--fit`` logic would see (used only when ``-c`` is unset
            and fit is on), in bytes: the free memory of the GPUs, or on a CPU-only
            machine the host's *total* RAM (that is what common/fit.cpp compares against
            there). None = assume the full trained context fits.

    Returns:
        The plan; refused configurations carry ``errors`` instead of numbers.
    """
    return _plan(model, config, gpu_names=gpu_names, free_bytes=free_bytes, layout=_layout(model))


def _plan(
    model: ModelInfo,
    config: ServerConfig,
    *,
    gpu_names: Sequence[str],
    free_bytes: int | None,
    layout: _Layout,
    quiet: bool = False,
) -> MemoryPlan:
    rv = _resolve(model, config, gpu_names)
    lay = layout
    # n_ctx: -c, --kv-unified-per-slot, --fit
    if config.n_ctx is not None and config.n_ctx < 0:
        rv.errors.append(
            f"-c {config.n_ctx}: a negative context size; llama.cpp aborts "
            "(GGML_ASSERT(n_outputs >= 1) in llama-context.cpp)"
        )
        return _empty_plan(config, rv, None)
    if config.n_ctx is not None and config.n_ctx > 0:
        rv.n_ctx_req = config.n_ctx
    elif config.n_ctx is None and config.kv_unified_per_slot and config.kv_unified_per_slot > 0:
        rv.n_ctx_req = rv.n_seq * config.kv_unified_per_slot
        rv.assumptions.append(
            f"-c not given: --kv-unified-per-slot sizes the pool to {rv.n_seq} x "
            f"{config.kv_unified_per_slot} = {rv.n_ctx_req} cells"
        )
    elif config.fit:
        _refusals(model, config, rv)
        if rv.errors:
            return _empty_plan(config, rv, None)
        rv.n_ctx_req = _fit_context(model, config, rv, lay, free_bytes)
    else:
        rv.n_ctx_req = 0
        rv.assumptions.append(
            f"-c not given and --fit off: the trained context ({model.n_ctx_train} cells) in total"
            + (f", split over {rv.n_seq} slots" if not rv.unified and rv.n_seq > 1 else "")
        )
    if not rv.errors:
        _refusals(model, config, rv)
    if rv.errors:
        return _empty_plan(config, rv, _context(model, config, rv, rv.n_ctx_req))
    rv.fa_effective = rv.fa != "off"
    if config.flash_attn == "auto" and rv.fa == "auto" and lay.kv_layers and not quiet:
        if rv.gpu_names:
            rv.assumptions.append(
                "-fa auto: assumed the GPU supports flash attention for this head size "
                "(llama.cpp turns it off otherwise, which needs a bigger compute buffer)"
            )
    alloc = _allocate(model, config, rv, lay, rv.n_ctx_req)
    ctx = alloc.ctx

    if config.swa_full and not lay.has_swa_cache and not quiet:
        rv.assumptions.append("--swa-full has no effect: the model has no sliding-window layers")
    if model.architecture in _SPECIAL_CACHE_ARCHS and not quiet:
        rv.assumptions.append(
            f"{model.architecture}: llama.cpp adds {_SPECIAL_CACHE_ARCHS[model.architecture]}, "
            "not included in this estimate"
        )
    for flag in config.unknown_flags:
        if flag.startswith("-") and not quiet:
            rv.assumptions.append(f"{flag}: not a llama-server option of this build (ignored here; llama-server would refuse it)")
    n_ctx_slot = ctx.n_ctx_seq
    if config.kv_unified_per_slot and config.kv_unified_per_slot > 0:
        n_ctx_slot = min(n_ctx_slot, config.kv_unified_per_slot)
    n_ctx_slot = min(n_ctx_slot, model.n_ctx_train) if model.n_ctx_train else n_ctx_slot
    usable = n_ctx_slot * rv.n_seq
    # what -c usable would allocate: llama_context pads n_ctx, and split slots each
    smaller = pad(usable) if rv.unified else pad(pad(usable) // rv.n_seq) * rv.n_seq
    if lay.kv_layers and not quiet and 0 < usable and smaller < ctx.n_ctx:
        cap = (
            "--kv-unified-per-slot"
            if config.kv_unified_per_slot and n_ctx_slot == config.kv_unified_per_slot
            else f"the trained context, {model.n_ctx_train}"
        )
        rv.assumptions.append(
            f"slots are capped at {n_ctx_slot} tokens ({cap}): at most {usable} of the "
            f"{ctx.n_ctx} KV cells can ever be in use; -c {usable} gives the same slots for less memory"
        )

    names = [n for n in rv.gpu_names if rv.n_gpu_layers > 0] + ["Host"]
    devices = []
    for name in names:
        is_host = name == "Host"
        w = alloc.weights.get(name, 0)
        k = alloc.kv.get(name, 0)
        r = alloc.rs.get(name, 0)
        c = alloc.compute.get(name, 0)
        o = alloc.output if is_host else 0
        devices.append(DeviceBudget(name, is_host, w, k, r, c, o, w + k + r + c + o))

    weights = sum(alloc.weights.values())
    kv = alloc.kv_k + alloc.kv_v
    compute = sum(alloc.compute.values())
    total = weights + kv + alloc.recurrent + compute + alloc.output
    # any negative --cache-ram means no limit (server-context.cpp); reported as -1
    cache_ram = config.cache_ram_mib * MiB if config.cache_ram_mib > 0 else max(config.cache_ram_mib, -1)
    return MemoryPlan(
        n_ctx=ctx.n_ctx,
        n_ctx_seq=ctx.n_ctx_seq,
        n_ctx_slot=n_ctx_slot,
        n_seq=rv.n_seq,
        n_stream=rv.n_stream,
        kv_unified=rv.unified,
        cache_type_k=config.cache_type_k,
        cache_type_v=config.cache_type_v,
        flash_attn=rv.fa,
        n_ubatch=ctx.n_ubatch,
        weights_bytes=weights,
        kv_bytes=kv,
        kv_k_bytes=alloc.kv_k,
        kv_v_bytes=alloc.kv_v,
        kv_swa_bytes=alloc.kv_swa,
        recurrent_bytes=alloc.recurrent,
        compute_bytes=compute,
        output_bytes=alloc.output,
        cache_ram_bytes=cache_ram,
        total_bytes=total,
        kv_bytes_per_cell=alloc.kv_per_cell,
        devices=tuple(devices),
        assumptions=tuple(dict.fromkeys(rv.assumptions)),
        errors=(),
        kv_cells_swa=alloc.kv_cells_swa,
        kv_layers=len(lay.kv_layers),
        flash_attn_effective=rv.fa_effective,
        n_rs_seq=rv.n_rs_seq,
    )


def max_context(
    model: ModelInfo,
    config: ServerConfig,
    memory_bytes: int,
    *,
    gpu_names: Sequence[str] = (),
) -> int:
    """The largest ``-c`` (multiple of 256 per stream) whose plan's total fits in
    ``memory_bytes``; 0 when even the smallest context does not fit.

    The search stops at the trained context per slot (``n_ctx_train`` x slots): more
    cells than that cannot be used by any slot.
    """
    lay = _layout(model)
    rv = _resolve(model, config, gpu_names)
    step = KV_PAD * rv.n_stream
    hi_ctx = max(model.n_ctx_train, KV_PAD) * rv.n_seq
    hi = max(1, hi_ctx // step)

    def fits(k: int) -> bool:
        plan = _plan(
            model, config.replace(n_ctx=k * step), gpu_names=gpu_names, free_bytes=None, layout=lay, quiet=True
        )
        return plan.ok and _budget_total(plan, gpu_names) <= memory_bytes

    return largest_fitting(fits, hi) * step


def largest_fitting(fits: Callable[[int], bool], hi: int) -> int:
    """The largest ``k`` in ``1..hi`` with ``fits(k)``, for ``fits`` true up to some point
    and false after it (memory grows with the context); 0 when ``fits(1)`` is false.
    Binary search: about log2(hi) plans."""
    if not fits(1):
        return 0
    if fits(hi):
        return hi
    lo = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _budget_total(plan: MemoryPlan, gpu_names: Sequence[str]) -> int:
    """The bytes compared with a memory budget: GPU rows when offloading, else everything."""
    gpu_rows = [d for d in plan.devices if not d.is_host]
    if gpu_names and gpu_rows:
        return sum(d.total_bytes for d in gpu_rows)
    return plan.total_bytes


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


_CAVEATS = {
    "f16": "full-precision cache (llama.cpp's default)",
    "bf16": "same size as f16, needs hardware with fast bf16",
    "f32": "twice the memory of f16 for no practical quality gain",
    "q8_0": "about half of f16, quality loss is usually negligible",
    "q5_1": "about 38% of f16, small quality loss",
    "q5_0": "about 34% of f16, small quality loss",
    "q4_1": "about 31% of f16, noticeable quality loss on long contexts",
    "q4_0": "about 28% of f16, noticeable quality loss on long contexts",
    "iq4_nl": "about 28% of f16, not supported by CUDA flash attention (runs on the CPU)",
}


def simulate(
    model: ModelInfo,
    config: ServerConfig,
    changes: dict,
    *,
    memory_bytes: int,
    gpu_names: Sequence[str] = (),
    label: str | None = None,
    base: MemoryPlan | None = None,
) -> WhatIf:
    """Apply ``changes`` (ServerConfig field names) and predict the result.

    The current context is kept as an explicit ``-c`` (so the comparison is fair and
    the command reproduces it) unless ``changes`` sets ``n_ctx``.

    Args:
        model: the GGUF header.
        config: the current configuration.
        changes: field -> new value, e.g. ``{"cache_type_k": "q8_0", "cache_type_v": "q8_0"}``.
        memory_bytes: the budget ``max_ctx`` is searched against.
        gpu_names: as for :func:`plan_memory`.
        label: the row label; default derived from ``changes``.
        base: the current plan, if already computed.

    Raises:
        KeyError: a change names a field without a llama-server flag.
    """
    lay = _layout(model)
    if base is None:
        base = _plan(model, config, gpu_names=gpu_names, free_bytes=None, layout=lay)
    changes = dict(changes)
    if "n_ctx" not in changes and base.ok:
        changes["n_ctx"] = base.n_ctx
    new_config = config.replace(**changes)
    plan = _plan(model, new_config, gpu_names=gpu_names, free_bytes=None, layout=lay)
    saves = (_budget_total(base, gpu_names) - _budget_total(plan, gpu_names)) if plan.ok and base.ok else 0
    best = max_context(model, new_config, memory_bytes, gpu_names=gpu_names) if plan.ok else 0
    command = render_command(config.command_line(**changes))
    return WhatIf(
        label=label or _label(changes, config),
        changes=changes,
        config=new_config,
        plan=plan,
        saves_bytes=saves,
        max_ctx=best,
        command=command,
        caveat=_caveat(changes, config, plan),
    )


def _label(changes: dict, config: ServerConfig) -> str:
    parts = []
    if "cache_type_k" in changes or "cache_type_v" in changes:
        k = changes.get("cache_type_k", config.cache_type_k)
        v = changes.get("cache_type_v", config.cache_type_v)
        parts.append(f"{k} cache" if k == v else f"K {k} / V {v} cache")
    if "n_parallel" in changes:
        n = changes["n_parallel"]
        parts.append(f"{n} slot" + ("s" if n != 1 else ""))
    if "flash_attn" in changes:
        parts.append(f"-fa {changes['flash_attn']}")
    for name in changes:
        if name not in ("cache_type_k", "cache_type_v", "n_parallel", "flash_attn", "n_ctx", "kv_unified"):
            parts.append(f"{name}={changes[name]}")
    return ", ".join(parts) or "current"


def _caveat(changes: dict, config: ServerConfig, plan: MemoryPlan) -> str:
    if plan.errors:
        return "llama.cpp refuses this: " + plan.errors[0]
    bits = []
    t = changes.get("cache_type_v", changes.get("cache_type_k"))
    if t and t != "f16":
        bits.append(_CAVEATS.get(t, ""))
    n = changes.get("n_parallel")
    current_slots = 4 if config.n_parallel < 0 else config.n_parallel
    if n is not None and n < current_slots:
        bits.append(f"only {n} request{'s' if n != 1 else ''} served at a time")
        if plan.kv_unified:
            bits.append("the shared KV pool stays the same size")
    if changes.get("flash_attn") == "on" and config.flash_attn == "off":
        bits.append("needs flash attention (-fa on)")
    bits = [b for b in bits if b]
    return "; ".join(bits) if bits else "no trade-off"


def what_if_table(
    model: ModelInfo,
    config: ServerConfig,
    *,
    memory_bytes: int,
    gpu_names: Sequence[str] = (),
    extra_cache_types: Sequence[str] = (),
) -> list[WhatIf]:
    """The standard what-if grid: cache types f16/q8_0/q4_0 (+ extras) crossed with the
    current slot count and fewer slots (half, one fewer, one).

    A cache type llama.cpp refuses gets one row (its reason), not one per slot count; a
    model without a KV cache (recurrent only) gets slot rows only.

    Rows that change the slot count keep the pool kind: a unified pool keeps its size
    (``-kvu``, same ``-c``: fewer slots share it), split slots keep their context each
    (``-c`` = per-slot context x slots).

    Raises:
        ValueError: an extra cache type llama.cpp does not accept.
    """
    for t in extra_cache_types:
        if t not in CACHE_TYPES:
            raise ValueError(f"Unsupported cache type: {t} (allowed: {', '.join(CACHE_TYPES)})")
    lay = _layout(model)
    base = _plan(model, config, gpu_names=gpu_names, free_bytes=None, layout=lay)
    types = list(dict.fromkeys(["f16", "q8_0", "q4_0", *extra_cache_types]))
    if not lay.kv_layers:  # recurrent only: the cache type changes nothing
        types = [config.cache_type_k]
    n_now = base.n_seq
    slot_options = [n_now]
    for n in (n_now // 2, n_now - 1, 1):
        if 1 <= n < n_now and n not in slot_options:
            slot_options.append(n)
    slot_options.sort(reverse=True)
    per_slot = base.n_ctx_seq
    rows: list[WhatIf] = []
    for t in types:
        for n in slot_options:
            if n != n_now and base.ok and rows and rows[-1].refused and rows[-1].plan.n_seq == n_now:
                break  # refused for the cache type: fewer slots cannot help, one row says it
            changes: dict = {}
            if t != config.cache_type_k or t != config.cache_type_v:
                changes["cache_type_k"] = t
                changes["cache_type_v"] = t
                if t in QUANTIZED and config.flash_attn == "off":
                    changes["flash_attn"] = "on"
            if n != n_now:
                changes["n_parallel"] = n
                if base.kv_unified:
                    changes["kv_unified"] = True  # same shared pool, fewer slots
                elif base.ok:
                    changes["n_ctx"] = per_slot * n  # same context per slot
            rows.append(
                simulate(
                    model,
                    config,
                    changes,
                    memory_bytes=memory_bytes,
                    gpu_names=gpu_names,
                    base=base,
                )
            )
    return rows
