"""Tiny random-weight GGUF models that the real llama-server loads, for tests and ``--demo``.

Each kind mirrors the memory-relevant shape of a real architecture (GQA, explicit head
sizes, sliding-window attention, MLA, recurrent and hybrid state, experts) at a size of a
few hundred kilobytes. Weights are seeded random numbers, so completions are gibberish but
every code path that allocates memory in llama.cpp runs for real.

Usage::

    from kvwall.app.demo.tinymodels import KINDS, write_model
    path = write_model("qwen3", tmp_path / "q.gguf", n_ctx_train=8192)

Qt-free: imported by the CLI's ``--demo`` and by the test suites.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DEFAULTS", "KINDS", "TinyModelError", "shard_paths", "write_model"]


class TinyModelError(ValueError):
    """An unknown kind or an override that does not apply to it."""


# Every knob a kind understands, with its default. Kinds ignore knobs that make no sense
# for them only where listed in `_IGNORED`; any other unknown override is an error.
_COMMON_DEFAULTS: dict[str, Any] = {
    "n_ctx_train": 4096,
    "n_layer": 2,
    "n_embd": 128,  # head size 32 by default: q8_0/q4_0 caches (block 32) are accepted
    "n_ff": 256,
    "n_head": 4,
    "n_head_kv": 2,  # int, or a per-layer list
    "head_k": None,  # attention.key_length (None: not written, n_embd // n_head)
    "head_v": None,  # attention.value_length
    "n_vocab": 384,  # total tokens: 3 specials + 256 bytes + word pieces
    "dtype": "f16",  # matrices: "f16" or "f32"; norms and SSM vectors are always f32
    "seed": 0,
    "name": None,  # general.name (default "tiny-<kind>")
    "split": 1,  # number of shards (name-00001-of-0000N.gguf)
    "tied_output": None,  # None: the kind's habit; True: no output.weight
}

_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"tied_output": False},
    # head size 64 while n_embd / n_head is 32, like Qwen3's 128 vs 64
    "qwen3": {"head_k": 64, "head_v": 64, "tied_output": True},
    "gemma3": {
        "n_layer": 4,
        "head_k": 64,
        "head_v": 64,
        "n_swa": 64,
        "swa_pattern": 3,  # llama.cpp: layer il is SWA when il % pattern < pattern - 1
        "tied_output": True,
    },
    "deepseek2": {
        "n_head_kv": 1,
        "q_lora_rank": 32,
        "kv_lora_rank": 64,  # K row = kv_lora_rank + n_rot = 96, a multiple of 32
        "n_rot": 32,
        "head_k_mla": 64,  # qk_nope + qk_rope
        "head_v_mla": 32,
        "n_layer_dense_lead": 1,
        "n_expert": 4,
        "n_expert_used": 2,
        "n_expert_shared": 1,
        "n_ff_exp": 64,
        "tied_output": False,
    },
    "mamba": {
        "n_embd": 64,
        "n_head": 0,
        "n_head_kv": 0,
        "n_ff": 0,
        "ssm_d_conv": 4,
        "ssm_d_inner": None,  # 2 * n_embd (the only expansion llama.cpp supports)
        "ssm_d_state": 16,
        "ssm_dt_rank": 4,
        "tied_output": True,
    },
    "lfm2": {
        "n_layer": 4,
        "n_head_kv": [0, 2, 0, 2],  # 0 = short-convolution (recurrent) layer
        "shortconv_l_cache": 3,
        "tied_output": True,
    },
    "granitehybrid": {
        "n_layer": 4,
        "n_head_kv": [0, 2, 0, 0],  # 0 = Mamba-2 layer; attention where non-zero
        "ssm_d_conv": 4,
        "ssm_d_inner": None,  # 2 * n_embd
        "ssm_d_state": 16,
        "ssm_dt_rank": 8,  # Mamba-2 heads
        "ssm_n_group": 1,
        "tied_output": True,
    },
    "qwen3moe": {
        "head_k": 64,
        "head_v": 64,
        "n_expert": 4,
        "n_expert_used": 2,
        "n_ff_exp": 64,
        "tied_output": False,
    },
}

KINDS: tuple[str, ...] = tuple(_KIND_DEFAULTS)

#: Effective defaults per kind (read-only view for callers that want to predict sizes).
DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    kind: {**_COMMON_DEFAULTS, **extra} for kind, extra in _KIND_DEFAULTS.items()
}


@dataclass
class _Spec:
    """What one kind writes: metadata keys and tensor shapes (ggml order, ne0 first)."""

    arch: str
    kv: dict[str, Any] = field(default_factory=dict)
    tensors: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)

    def t(self, name: str, *shape: int) -> None:
        self.tensors.append((name, tuple(int(s) for s in shape)))


# ---------------------------------------------------------------------------- vocab

_WORDS = ["the", "of", "and", "to", "in", "is", "was", "that", "for", "on", "with", "as", "by", "at", "from", "it", "an", "be", "this", "are", "or", "his", "which", "but", "not", "have", "had", "were", "one", "all", "their", "they", "can", "has", "more", "been", "its", "also", "hello", "world", "model", "memory", "cache", "context", "token", "slot", "server", "agent", "llama", "tiny"]


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocab: <unk> <s> </s>, 256 byte tokens, then word pieces."""
    base = 3 + 256
    if n_vocab < base + 1:
        raise TinyModelError(f"n_vocab must be at least {base + 1}, got {n_vocab}")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE...
    pieces: list[str] = ["\u2581"]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["\u2581" + w for w in _WORDS]
    seen = set(tokens)
    i = 0
    while len(pieces) < n_vocab - base:
        # deterministic filler pieces: two-letter syllables
        a, b = divmod(i, 26)
        pieces.append(
            "\u2581" + chr(ord("a") + a % 26) + chr(ord("a") + b) + ("" if a < 26 else str(a // 26))
        )
        i += 1
    for p in pieces[: n_vocab - base]:
        if p in seen:
            continue
        seen.add(p)
        tokens.append(p)
        scores.append(-float(len(tokens)) / 100.0)
        types.append(1)  # NORMAL
    while len(tokens) < n_vocab:  # pragma: no cover - only if the filler collided
        tokens.append(f"\u2581x{len(tokens)}")
        scores.append(-float(len(tokens)) / 100.0)
        types.append(1)
    return tokens, scores, types


# ---------------------------------------------------------------------------- kinds


def _common(spec: _Spec, p: dict[str, Any]) -> None:
    a = spec.arch
    spec.kv[f"{a}.context_length"] = ("u32", p["n_ctx_train"])
    spec.kv[f"{a}.embedding_length"] = ("u32", p["n_embd"])
    spec.kv[f"{a}.block_count"] = ("u32", p["n_layer"])
    spec.kv[f"{a}.attention.layer_norm_rms_epsilon"] = ("f32", 1e-6)
    if p["n_head"]:
        spec.kv[f"{a}.feed_forward_length"] = ("u32", p["n_ff"])
        spec.kv[f"{a}.attention.head_count"] = ("u32", p["n_head"])
        if isinstance(p["n_head_kv"], (list, tuple)):
            spec.kv[f"{a}.attention.head_count_kv"] = ("arr_i32", list(p["n_head_kv"]))
        else:
            spec.kv[f"{a}.attention.head_count_kv"] = ("u32", p["n_head_kv"])
        spec.kv[f"{a}.rope.freq_base"] = ("f32", 10000.0)
        if p["head_k"] is not None:
            spec.kv[f"{a}.attention.key_length"] = ("u32", p["head_k"])
        if p["head_v"] is not None:
            spec.kv[f"{a}.attention.value_length"] = ("u32", p["head_v"])


def _head_kv(p: dict[str, Any], il: int) -> int:
    h = p["n_head_kv"]
    return int(h[il]) if isinstance(h, (list, tuple)) else int(h)


def _head_sizes(p: dict[str, Any]) -> tuple[int, int]:
    dflt = p["n_embd"] // p["n_head"]
    hk = p["head_k"] if p["head_k"] is not None else dflt
    hv = p["head_v"] if p["head_v"] is not None else dflt
    return hk, hv


def _embd_out(
    spec: _Spec, p: dict[str, Any], tied_default: bool, norm: str = "output_norm"
) -> None:
    spec.t("token_embd.weight", p["n_embd"], p["n_vocab"])
    spec.t(f"{norm}.weight", p["n_embd"])
    tied = tied_default if p["tied_output"] is None else p["tied_output"]
    if not tied:
        spec.t("output.weight", p["n_embd"], p["n_vocab"])


def _attn(spec: _Spec, p: dict[str, Any], il: int, qk_norm: bool) -> None:
    e, nh = p["n_embd"], p["n_head"]
    hk, hv = _head_sizes(p)
    nkv = _head_kv(p, il)
    b = f"blk.{il}"
    spec.t(f"{b}.attn_norm.weight", e)
    spec.t(f"{b}.attn_q.weight", e, hk * nh)
    spec.t(f"{b}.attn_k.weight", e, hk * nkv)
    spec.t(f"{b}.attn_v.weight", e, hv * nkv)
    spec.t(f"{b}.attn_output.weight", hv * nh, e)
    if qk_norm:
        spec.t(f"{b}.attn_q_norm.weight", hk)
        spec.t(f"{b}.attn_k_norm.weight", hk)


def _ffn(spec: _Spec, p: dict[str, Any], il: int) -> None:
    e, f = p["n_embd"], p["n_ff"]
    b = f"blk.{il}"
    spec.t(f"{b}.ffn_norm.weight", e)
    spec.t(f"{b}.ffn_gate.weight", e, f)
    spec.t(f"{b}.ffn_down.weight", f, e)
    spec.t(f"{b}.ffn_up.weight", e, f)


def _moe(spec: _Spec, p: dict[str, Any], il: int, norm: bool = True) -> None:
    e, f, n = p["n_embd"], p["n_ff_exp"], p["n_expert"]
    b = f"blk.{il}"
    if norm:
        spec.t(f"{b}.ffn_norm.weight", e)
    spec.t(f"{b}.ffn_gate_inp.weight", e, n)
    spec.t(f"{b}.ffn_gate_exps.weight", e, f, n)
    spec.t(f"{b}.ffn_down_exps.weight", f, e, n)
    spec.t(f"{b}.ffn_up_exps.weight", e, f, n)


def _experts_kv(spec: _Spec, p: dict[str, Any]) -> None:
    a = spec.arch
    if not 0 < p["n_expert_used"] <= p["n_expert"]:
        raise TinyModelError(
            f"n_expert_used must be in 1..n_expert ({p['n_expert']}), got {p['n_expert_used']}"
        )
    spec.kv[f"{a}.expert_count"] = ("u32", p["n_expert"])
    spec.kv[f"{a}.expert_used_count"] = ("u32", p["n_expert_used"])
    spec.kv[f"{a}.expert_feed_forward_length"] = ("u32", p["n_ff_exp"])


def _llama(p: dict[str, Any]) -> _Spec:
    s = _Spec("llama")
    _common(s, p)
    hk, hv = _head_sizes(p)
    if hk != hv:
        raise TinyModelError(f"llama needs head_k == head_v, got {hk} and {hv}")
    s.kv["llama.rope.dimension_count"] = ("u32", hk)
    s.kv["llama.vocab_size"] = ("u32", p["n_vocab"])
    _embd_out(s, p, tied_default=False)
    for il in range(p["n_layer"]):
        _attn(s, p, il, qk_norm=False)
        _ffn(s, p, il)
    return s


def _qwen3(p: dict[str, Any]) -> _Spec:
    s = _Spec("qwen3")
    _common(s, p)
    hk, hv = _head_sizes(p)
    if hk != hv:
        raise TinyModelError(f"qwen3 needs head_k == head_v, got {hk} and {hv}")
    _embd_out(s, p, tied_default=True)
    for il in range(p["n_layer"]):
        _attn(s, p, il, qk_norm=True)
        _ffn(s, p, il)
    return s


def _qwen3moe(p: dict[str, Any]) -> _Spec:
    s = _Spec("qwen3moe")
    _common(s, p)
    _experts_kv(s, p)
    _embd_out(s, p, tied_default=False)
    for il in range(p["n_layer"]):
        _attn(s, p, il, qk_norm=True)
        _moe(s, p, il)
    return s


def _gemma3(p: dict[str, Any]) -> _Spec:
    s = _Spec("gemma3")
    _common(s, p)
    s.kv["gemma3.attention.sliding_window"] = ("u32", p["n_swa"])
    pattern = p["swa_pattern"]
    if isinstance(pattern, (list, tuple)):
        if len(pattern) != p["n_layer"]:
            raise TinyModelError(
                f"swa_pattern list needs {p['n_layer']} entries, got {len(pattern)}"
            )
        s.kv["gemma3.attention.sliding_window_pattern"] = ("arr_bool", [bool(x) for x in pattern])
    else:
        s.kv["gemma3.attention.sliding_window_pattern"] = ("u32", pattern)
    s.kv["gemma3.rope.freq_base_swa"] = ("f32", 10000.0)
    _embd_out(s, p, tied_default=True)
    e = p["n_embd"]
    for il in range(p["n_layer"]):
        _attn(s, p, il, qk_norm=True)
        s.t(f"blk.{il}.post_attention_norm.weight", e)
        _ffn(s, p, il)
        s.t(f"blk.{il}.post_ffw_norm.weight", e)
    return s


def _deepseek2(p: dict[str, Any]) -> _Spec:
    s = _Spec("deepseek2")
    a = s.arch
    # MLA as current convert_hf_to_gguf.py writes it: one KV head whose K row is the
    # compressed latent plus the rope part, and V the latent alone.
    rank, rot = p["kv_lora_rank"], p["n_rot"]
    if p["head_k"] is None:
        p["head_k"] = rank + rot
    if p["head_v"] is None:
        p["head_v"] = rank
    _common(s, p)
    s.kv[f"{a}.rope.dimension_count"] = ("u32", rot)
    s.kv[f"{a}.vocab_size"] = ("u32", p["n_vocab"])
    s.kv[f"{a}.leading_dense_block_count"] = ("u32", p["n_layer_dense_lead"])
    s.kv[f"{a}.attention.q_lora_rank"] = ("u32", p["q_lora_rank"])
    s.kv[f"{a}.attention.kv_lora_rank"] = ("u32", rank)
    s.kv[f"{a}.attention.key_length_mla"] = ("u32", p["head_k_mla"])
    s.kv[f"{a}.attention.value_length_mla"] = ("u32", p["head_v_mla"])
    s.kv[f"{a}.expert_shared_count"] = ("u32", p["n_expert_shared"])
    s.kv[f"{a}.expert_weights_scale"] = ("f32", 1.0)
    _experts_kv(s, p)
    e, nh = p["n_embd"], p["n_head"]
    k_mla, v_mla = p["head_k_mla"], p["head_v_mla"]
    nope = k_mla - rot
    if nope < 1:
        raise TinyModelError(f"head_k_mla ({k_mla}) must exceed n_rot ({rot})")
    _embd_out(s, p, tied_default=False)
    for il in range(p["n_layer"]):
        b = f"blk.{il}"
        s.t(f"{b}.attn_norm.weight", e)
        if p["q_lora_rank"] > 0:
            s.t(f"{b}.attn_q_a_norm.weight", p["q_lora_rank"])
            s.t(f"{b}.attn_q_a.weight", e, p["q_lora_rank"])
            s.t(f"{b}.attn_q_b.weight", p["q_lora_rank"], nh * k_mla)
        else:
            s.t(f"{b}.attn_q.weight", e, nh * k_mla)
        s.t(f"{b}.attn_kv_a_norm.weight", rank)
        s.t(f"{b}.attn_kv_a_mqa.weight", e, rank + rot)
        s.t(f"{b}.attn_k_b.weight", nope, rank, nh)
        s.t(f"{b}.attn_v_b.weight", rank, v_mla, nh)
        s.t(f"{b}.attn_output.weight", nh * v_mla, e)
        if il < p["n_layer_dense_lead"]:
            _ffn(s, p, il)
        else:
            _moe(s, p, il)
            f = p["n_ff_exp"] * p["n_expert_shared"]
            s.t(f"{b}.ffn_gate_shexp.weight", e, f)
            s.t(f"{b}.ffn_down_shexp.weight", f, e)
            s.t(f"{b}.ffn_up_shexp.weight", e, f)
    return s


def _mamba(p: dict[str, Any]) -> _Spec:
    s = _Spec("mamba")
    a = s.arch
    e = p["n_embd"]
    d_inner = p["ssm_d_inner"] if p["ssm_d_inner"] is not None else 2 * e
    if d_inner != 2 * e:
        raise TinyModelError(f"mamba needs ssm_d_inner == 2 * n_embd ({2 * e}), got {d_inner}")
    p["n_head"] = 0
    _common(s, p)
    s.kv[f"{a}.ssm.conv_kernel"] = ("u32", p["ssm_d_conv"])
    s.kv[f"{a}.ssm.inner_size"] = ("u32", d_inner)
    s.kv[f"{a}.ssm.state_size"] = ("u32", p["ssm_d_state"])
    s.kv[f"{a}.ssm.time_step_rank"] = ("u32", p["ssm_dt_rank"])
    d_conv, d_state, dt_rank = p["ssm_d_conv"], p["ssm_d_state"], p["ssm_dt_rank"]
    _embd_out(s, p, tied_default=True)
    for il in range(p["n_layer"]):
        b = f"blk.{il}"
        s.t(f"{b}.attn_norm.weight", e)
        s.t(f"{b}.ssm_in.weight", e, 2 * d_inner)
        s.t(f"{b}.ssm_conv1d.weight", d_conv, d_inner)
        s.t(f"{b}.ssm_conv1d.bias", d_inner)
        s.t(f"{b}.ssm_x.weight", d_inner, dt_rank + 2 * d_state)
        s.t(f"{b}.ssm_dt.weight", dt_rank, d_inner)
        s.t(f"{b}.ssm_dt.bias", d_inner)
        s.t(f"{b}.ssm_a", d_state, d_inner)
        s.t(f"{b}.ssm_d", d_inner)
        s.t(f"{b}.ssm_out.weight", d_inner, e)
    return s


def _lfm2(p: dict[str, Any]) -> _Spec:
    s = _Spec("lfm2")
    n_layer = p["n_layer"]
    if not isinstance(p["n_head_kv"], (list, tuple)):
        # a scalar means "attention everywhere but layer 0": keep it hybrid
        p["n_head_kv"] = [0] + [int(p["n_head_kv"])] * (n_layer - 1)
    if len(p["n_head_kv"]) != n_layer:
        raise TinyModelError(
            f"lfm2 n_head_kv list needs {n_layer} entries, got {len(p['n_head_kv'])}"
        )
    hk, hv = _head_sizes(p)
    if hk * p["n_head"] != p["n_embd"] or hk != hv:
        raise TinyModelError("lfm2 needs head_k == head_v == n_embd / n_head")
    _common(s, p)
    s.kv["lfm2.shortconv.l_cache"] = ("u32", p["shortconv_l_cache"])
    e = p["n_embd"]
    _embd_out(s, p, tied_default=True, norm="token_embd_norm")
    for il in range(n_layer):
        b = f"blk.{il}"
        _ffn(s, p, il)
        if _head_kv(p, il) > 0:
            _attn(s, p, il, qk_norm=True)
        else:
            s.t(f"{b}.attn_norm.weight", e)
            s.t(f"{b}.shortconv.conv.weight", p["shortconv_l_cache"], e)
            s.t(f"{b}.shortconv.in_proj.weight", e, 3 * e)
            s.t(f"{b}.shortconv.out_proj.weight", e, e)
    return s


def _granitehybrid(p: dict[str, Any]) -> _Spec:
    s = _Spec("granitehybrid")
    a = s.arch
    e, n_layer = p["n_embd"], p["n_layer"]
    if not isinstance(p["n_head_kv"], (list, tuple)):
        p["n_head_kv"] = [0] * (n_layer - 1) + [int(p["n_head_kv"])]
    d_inner = p["ssm_d_inner"] if p["ssm_d_inner"] is not None else 2 * e
    if d_inner != 2 * e:
        raise TinyModelError(
            f"granitehybrid needs ssm_d_inner == 2 * n_embd ({2 * e}), got {d_inner}"
        )
    d_conv, d_state = p["ssm_d_conv"], p["ssm_d_state"]
    n_ssm_head, n_group = p["ssm_dt_rank"], p["ssm_n_group"]
    if d_inner % n_ssm_head or d_inner % n_group:
        raise TinyModelError(
            "granitehybrid needs ssm_d_inner divisible by ssm_dt_rank and ssm_n_group"
        )
    _common(s, p)
    s.kv[f"{a}.ssm.conv_kernel"] = ("u32", d_conv)
    s.kv[f"{a}.ssm.inner_size"] = ("u32", d_inner)
    s.kv[f"{a}.ssm.state_size"] = ("u32", d_state)
    s.kv[f"{a}.ssm.time_step_rank"] = ("u32", n_ssm_head)
    s.kv[f"{a}.ssm.group_count"] = ("u32", n_group)
    s.kv[f"{a}.rope.dimension_count"] = ("u32", _head_sizes(p)[0])
    d_in_proj = 2 * d_inner + 2 * n_group * d_state + n_ssm_head
    d_conv_ch = d_inner + 2 * n_group * d_state
    _embd_out(s, p, tied_default=True)
    for il in range(n_layer):
        b = f"blk.{il}"
        if _head_kv(p, il) > 0:
            _attn(s, p, il, qk_norm=False)
        else:
            s.t(f"{b}.attn_norm.weight", e)
            s.t(f"{b}.ssm_in.weight", e, d_in_proj)
            s.t(f"{b}.ssm_conv1d.weight", d_conv, d_conv_ch)
            s.t(f"{b}.ssm_conv1d.bias", d_conv_ch)
            s.t(f"{b}.ssm_dt.bias", n_ssm_head)
            s.t(f"{b}.ssm_a", 1, n_ssm_head)
            s.t(f"{b}.ssm_d", 1, n_ssm_head)
            s.t(f"{b}.ssm_norm.weight", d_inner // n_group, n_group)
            s.t(f"{b}.ssm_out.weight", d_inner, e)
        _ffn(s, p, il)
    return s


_BUILDERS: dict[str, Callable[[dict[str, Any]], _Spec]] = {
    "llama": _llama,
    "qwen3": _qwen3,
    "gemma3": _gemma3,
    "deepseek2": _deepseek2,
    "mamba": _mamba,
    "lfm2": _lfm2,
    "granitehybrid": _granitehybrid,
    "qwen3moe": _qwen3moe,
}

# tensors llama.cpp wants in f32 whatever the matrix dtype
_F32_SUFFIXES = (
    ".ssm_a",
    ".ssm_d",
    ".ssm_conv1d.weight",
    ".shortconv.conv.weight",
    "_norm.weight",
    ".bias",
)


# ---------------------------------------------------------------------------- writing


def _tensor_data(
    name: str, shape: tuple[int, ...], dtype: str, rng: np.random.Generator
) -> np.ndarray:
    np_shape = tuple(reversed(shape))  # numpy is row-major: ggml's ne0 is the last axis
    if name.endswith("norm.weight"):  # also "_norm.weight"
        return np.ones(np_shape, dtype=np.float32)
    if name.endswith(".ssm_a"):
        # A = -exp(A_log): negative, so the state decays
        return -np.exp(rng.uniform(0.0, 1.0, np_shape)).astype(np.float32)
    if name.endswith(".ssm_d"):
        return np.ones(np_shape, dtype=np.float32)
    if name.endswith(".bias"):
        return np.zeros(np_shape, dtype=np.float32)
    data = rng.normal(0.0, 0.05, np_shape).astype(np.float32)
    if len(shape) >= 2 and dtype == "f16" and not name.endswith(_F32_SUFFIXES):
        return data.astype(np.float16)
    return data


def shard_paths(path: str | pathlib.Path, split: int) -> list[pathlib.Path]:
    """The file names ``write_model(..., split=N)`` produces, first shard first."""
    path = pathlib.Path(path)
    if split <= 1:
        return [path]
    stem = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else path.name
    return [path.with_name(f"{stem}-{i:05d}-of-{split:05d}.gguf") for i in range(1, split + 1)]


def write_model(kind: str, path: str | pathlib.Path, **overrides: Any) -> pathlib.Path:
    """Write a tiny random-weight GGUF model of one architecture kind.

    Args:
        kind: one of ``KINDS``.
        path: the file to write (``.gguf``). With ``split=N`` (N > 1) the shards are
            written beside it as ``<stem>-0000i-of-0000N.gguf``.
        **overrides: any key of ``DEFAULTS[kind]``, e.g. ``n_ctx_train``, ``n_layer``,
            ``n_embd``, ``n_head``, ``n_head_kv`` (int or per-layer list), ``head_k``,
            ``head_v``, ``n_vocab``, ``n_ff``, ``dtype`` (``"f16"``/``"f32"``), ``seed``,
            ``split``; kind-specific ones such as ``n_swa``/``swa_pattern`` (gemma3),
            ``kv_lora_rank`` (deepseek2), ``ssm_d_state`` (mamba), ``n_expert``.

    Returns:
        The path to give llama-server's ``-m`` (the first shard for split models).

    Raises:
        TinyModelError: unknown kind, unknown override, or inconsistent sizes.
    """
    if kind not in _BUILDERS:
        raise TinyModelError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(KINDS)}")
    params = _params(kind, overrides)
    spec = _BUILDERS[kind](params)
    split = int(params["split"])
    if split < 1 or split > len(spec.tensors):
        raise TinyModelError(f"split must be in 1..{len(spec.tensors)}, got {split}")
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_gguf(out, kind, spec, params, split)
    written = shard_paths(out, split)
    return written[0]


def _params(kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The kind's defaults with the overrides applied, checked for consistent sizes."""
    params = dict(DEFAULTS[kind])
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise TinyModelError(
            f"{kind}: unknown override(s) {', '.join(unknown)}; known: {', '.join(sorted(params))}"
        )
    params.update(overrides)
    if params["dtype"] not in ("f16", "f32"):
        raise TinyModelError(f"dtype must be 'f16' or 'f32', got {params['dtype']!r}")
    for key in ("n_layer", "n_embd", "n_ctx_train"):
        if int(params[key]) <= 0:
            raise TinyModelError(f"{key} must be positive, got {params[key]}")
    if params["n_head"] and params["n_embd"] % params["n_head"]:
        raise TinyModelError(
            f"n_embd ({params['n_embd']}) must be a multiple of n_head ({params['n_head']})"
        )
    if (isinstance(DEFAULTS[kind]["n_head_kv"], list) and "n_layer" in overrides
            and "n_head_kv" not in overrides):
        # keep the kind's hybrid layout at the new depth: attention every `every` layers
        every = 2 if kind == "lfm2" else 4
        params["n_head_kv"] = [2 if il % every == 1 else 0 for il in range(params["n_layer"])]
    if (
        isinstance(params["n_head_kv"], (list, tuple))
        and len(params["n_head_kv"]) != params["n_layer"]
    ):
        raise TinyModelError(
            f"n_head_kv list needs n_layer ({params['n_layer']}) entries, "
            f"got {len(params['n_head_kv'])}"
        )
    params["n_head_kv"] = (
        list(params["n_head_kv"])
        if isinstance(params["n_head_kv"], (list, tuple))
        else params["n_head_kv"]
    )
    return params


def _write_gguf(out: pathlib.Path, kind: str, spec: _Spec, params: dict[str, Any],
                split: int) -> None:
    """The header, a tiny vocabulary and random tensors, in ``split`` shards."""
    import gguf  # deferred: numpy-heavy, and only needed when writing

    tokens, scores, types = _vocab(int(params["n_vocab"]))
    per_shard = -(-len(spec.tensors) // split)
    writer = gguf.GGUFWriter(out, spec.arch, split_max_tensors=per_shard if split > 1 else 0)
    writer.add_name(params["name"] or f"tiny-{kind}")
    writer.add_file_type(1 if params["dtype"] == "f16" else 0)
    for key, (typ, value) in spec.kv.items():
        _add_kv(writer, key, typ, value)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    rng = np.random.default_rng(int(params["seed"]))
    for name, shape in spec.tensors:
        writer.add_tensor(name, _tensor_data(name, shape, params["dtype"], rng))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_kv(writer: Any, key: str, typ: str, value: Any) -> None:
    import gguf

    if typ == "u32":
        writer.add_uint32(key, int(value))
    elif typ == "f32":
        writer.add_float32(key, float(value))
    elif typ == "str":
        writer.add_string(key, str(value))
    elif typ == "arr_i32":
        writer.add_key_value(
            key, [int(v) for v in value], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32
        )
    elif typ == "arr_bool":
        writer.add_key_value(
            key, [bool(v) for v in value], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.BOOL
        )
    else:  # pragma: no cover - programming error
        raise AssertionError(typ)


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m kvwall.app.demo.tinymodels KIND PATH [key=value...]`` (a debugging aid)."""
    import ast
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(
            f"usage: tinymodels KIND PATH [key=value...]; kinds: {', '.join(KINDS)}",
            file=sys.stderr,
        )
        return 2
    kw: dict[str, Any] = {}
    for item in args[2:]:
        k, _, v = item.partition("=")
        try:
            kw[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            kw[k] = v
    try:
        print(write_model(args[0], args[1], **kw))
    except TinyModelError as exc:
        print(f"tinymodels: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
