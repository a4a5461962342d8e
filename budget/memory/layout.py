"""Model structure as llama_model::create_memory sees it: which layers own KV and recurrent state."""

from __future__ import annotations

from dataclasses import dataclass

from kvwall.monitors.gguf import ModelInfo
from kvwall.monitors.gguf.arch import (
    HYBRID_ARCHS,
    HYBRID_NEXTN_FILTER_ARCHS,
    NO_MEMORY_ARCHS,
    RECURRENT_ARCHS,
)

LLAMA_MAX_SEQ = 256  # src/llama-cparams.h
KV_PAD = 256  # llama_context pads n_ctx (and n_ctx_seq, the SWA cache) to 256 cells



def pad(n: int, to: int = KV_PAD) -> int:
    """``GGML_PAD``: round ``n`` up to a multiple of ``to``."""
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class Layout:
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


def is_swa(model: ModelInfo, il: int) -> bool:
    """Whether layer ``il`` uses sliding-window attention."""
    return il < len(model.swa_layers) and bool(model.swa_layers[il])


def head_k(model: ModelInfo, il: int) -> int:
    """``n_embd_head_k`` of layer ``il``."""
    return model.head_k_swa if is_swa(model, il) else model.head_k


def head_v(model: ModelInfo, il: int) -> int:
    """``n_embd_head_v`` of layer ``il``."""
    return model.head_v_swa if is_swa(model, il) else model.head_v


def _n_head_kv(model: ModelInfo, il: int) -> int:
    return model.n_head_kv[il] if il < len(model.n_head_kv) else 0


def _memory_layers(model: ModelInfo) -> tuple[list[int], list[int]]:
    """The layers with a KV cache and those with recurrent state (llama_model::create_memory)."""
    arch = model.architecture
    n_all = model.n_layer_all
    n_main = model.n_layer
    recr = tuple(il < len(model.recurrent_layers) and bool(model.recurrent_layers[il]) for il in range(n_all))

    def has_kv(il: int) -> bool:
        return model.n_layer_kv_from_start < 0 or il < model.n_layer_kv_from_start

    if arch in NO_MEMORY_ARCHS:
        return [], []
    if arch in RECURRENT_ARCHS:
        return [], list(range(n_main))
    if arch not in HYBRID_ARCHS:
        limit = n_main if (model.n_layer_nextn > 0 and n_main > 0) else n_all
        return [il for il in range(limit) if has_kv(il)], []
    if arch == "falcon-h1":
        return [il for il in range(n_all) if has_kv(il)], list(range(n_main))
    if arch in ("nemotron_h", "nemotron_h_moe"):
        n_ff = model.n_ff
        ff0 = [il >= len(n_ff) or n_ff[il] == 0 for il in range(n_all)]
        kv = [il for il in range(n_all) if has_kv(il) and not recr[il] and ff0[il]]
        return kv, [il for il in range(n_main) if recr[il] and ff0[il]]
    kv_range = n_main if arch in HYBRID_NEXTN_FILTER_ARCHS else n_all
    kv = [il for il in range(kv_range) if has_kv(il) and not recr[il]]
    return kv, [il for il in range(n_main) if recr[il]]


def model_layout(model: ModelInfo) -> Layout:
    """The per-layer memory structure of ``model``, as llama_model and llama_hparams see it."""
    n_all = model.n_layer_all
    has_swa_cache = model.n_swa > 0 and any(is_swa(model, il) for il in range(n_all))
    kv, rs = _memory_layers(model)
    k_width = tuple(head_k(model, il) * _n_head_kv(model, il) for il in kv)
    v_width = tuple(head_v(model, il) * _n_head_kv(model, il) for il in kv)
    v_max = max([head_v(model, il) * _n_head_kv(model, il) for il in range(n_all)] or [0])

    n_embd_r, n_embd_s = _recurrent_widths(model)
    return Layout(
        kv_layers=tuple(kv),
        swa=tuple(has_swa_cache and is_swa(model, il) for il in kv),
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
