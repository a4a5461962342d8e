"""The tensor types ``llama-quantize ... Q4_K_M`` picks, for header-only models of real shapes.

A mirror of ``llama_tensor_get_type`` in llama.cpp's src/llama-quant.cpp (b11434) for one
file type, Q4_K_M, without an importance matrix or ``--tensor-type`` overrides, and for
every architecture but Falcon (whose rules differ). Each tensor starts at Q4_K; then:

- ``output.weight`` (or ``token_embd.weight`` when the output is tied to it) gets Q6_K;
- attention-V-like tensors (``attn_v``, ``attn_qkv``, ``attn_kv_b``), counted in file
  order, get Q6_K where ``use_more_bits`` says so; a 70B Llama lifts the others to Q5_K;
- ``ffn_down*`` (experts and shared experts included) gets Q6_K on ``use_more_bits`` layers;
- an 8-expert model lifts ``attn_v``/``attn_k`` to Q8_0 and ``attn_output`` to Q5_K;
- a row length that is no multiple of the type's block falls back (Q4_K -> Q5_0,
  Q5_K -> Q5_1, Q6_K -> Q8_0, else F16);
- norms, 1-D tensors, router weights (``ffn_gate_inp``) and ``ssm_conv1d`` are not
  quantized: they keep the type the converter wrote (F32).

tests/integration/test_q4_k_m.py compares this with the real llama-quantize.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = ["QuantTarget", "q4_k_m_types", "quantized", "weight_order"]

QT = GGMLQuantizationType
Category = Literal[
    "output", "token_embd", "attn_v", "attn_k", "attn_q", "attn_output",
    "ffn_up", "ffn_gate", "ffn_down", "other",
]  # fmt: skip

# tensor_get_category's substring tests, in its order; attn_qkv and attn_kv_b take the
# attn_v branch for Q4_K_M (category_is_attn_v is tested before their own branches)
_CATEGORY_MARKERS: tuple[tuple[str, Category], ...] = (
    ("attn_qkv.weight", "attn_v"),
    ("attn_kv_b.weight", "attn_v"),
    ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"),
    ("attn_q.weight", "attn_q"),
    ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"),
    ("ffn_gate", "ffn_gate"),
    ("ffn_down", "ffn_down"),
)
# tensor_allows_quantization: names (substrings) that stay as converted
_NOT_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d", "shortconv.conv.weight")
_FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}
_BLK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class QuantTarget:
    """What the quantizer knows of the model beyond the tensor table.

    Attributes:
        n_layer_all: ``block_count`` (NextN/MTP blocks included).
        n_expert: ``expert_count`` (0 for a dense model).
        llama_70b: llama.cpp's ``LLM_TYPE_70B`` (an 80-layer Llama with grouped KV heads).
    """

    n_layer_all: int
    n_expert: int = 0
    llama_70b: bool = False


def weight_order(names: Iterable[str]) -> list[str]:
    """Tensor names in llama_model_loader's ``weight_name_comparer`` order: tensors outside
    the blocks first, then block by block, names sorted within each (the order
    llama-quantize visits and writes them)."""

    def key(name: str) -> tuple[int, str]:
        m = _BLK.match(name)
        return (int(m.group(1)) if m else -1, name)

    return sorted(names, key=key)


def quantized(name: str, shape: tuple[int, ...]) -> bool:
    """Whether llama-quantize quantizes this tensor (tensor_allows_quantization)."""
    n_dims = max((i + 1 for i, d in enumerate(shape) if d > 1), default=1)
    return (
        n_dims >= 2
        and name.endswith("weight")
        and not any(marker in name for marker in _NOT_QUANTIZED)
    )


def _category(name: str) -> Category:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    return next((cat for marker, cat in _CATEGORY_MARKERS if marker in name), "other")


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


@dataclass
class _Counters:
    """quantize_state_impl's running counts (attention-V tensors and ffn_down tensors)."""

    n_attention_wv: int
    tied: bool
    i_attention_wv: int = 0
    i_ffn_down: int = 0


def _layer(name: str, counter: int, target: QuantTarget) -> int:
    """layer_info: the block number from the name for MoE models, else the running count."""
    if target.n_expert > 1:
        m = _BLK.match(name)
        if m is None:
            raise ValueError(f"Failed to determine layer for tensor {name}")
        return int(m.group(1))
    return counter


def _mixture_type(name: str, cat: Category, target: QuantTarget, state: _Counters) -> QT:
    """llama_tensor_get_type_impl for Q4_K_M, before the block-size fallback."""
    new = QT.Q4_K
    if cat == "output" or (state.tied and cat == "token_embd"):
        return QT.Q6_K  # ne0 % 256 -> Q8_0 is the fallback below
    if cat == "attn_v":
        if _use_more_bits(state.i_attention_wv, state.n_attention_wv):
            new = QT.Q6_K
        if target.llama_70b and new == QT.Q4_K:
            new = QT.Q5_K  # "8 heads share attn_v: more bits for almost nothing"
        if target.n_expert == 8:
            new = QT.Q8_0
        state.i_attention_wv += 1
    elif cat == "attn_k" and target.n_expert == 8:
        new = QT.Q8_0
    elif cat == "ffn_down":
        if _use_more_bits(_layer(name, state.i_ffn_down, target), target.n_layer_all):
            new = QT.Q6_K
        state.i_ffn_down += 1
    elif cat == "attn_output" and target.n_expert == 8:
        new = QT.Q5_K
    return new


def _fallback(qtype: QT, ne0: int) -> QT:
    """tensor_type_fallback: a type whose block divides the row length."""
    if ne0 % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    other = _FALLBACK.get(qtype, QT.F16)
    return other if ne0 % GGML_QUANT_SIZES[other][0] == 0 else QT.F16


def q4_k_m_types(
    tensors: Mapping[str, tuple[int, ...]], target: QuantTarget
) -> dict[str, GGMLQuantizationType | None]:
    """The type llama-quantize gives each tensor of a model quantized to Q4_K_M.

    Args:
        tensors: tensor name -> ggml shape (ne0 first), every tensor of the model.
        target: the model facts the quantizer's rules read.

    Returns:
        Tensor name -> its Q4_K_M type, or None for a tensor that is not quantized (it
        keeps the converter's type).

    Raises:
        ValueError: a tensor of an MoE model whose ``ffn_down`` name has no block number.
    """
    names = weight_order(tensors)
    state = _Counters(
        n_attention_wv=sum(_category(n) == "attn_v" for n in names),
        tied="output.weight" not in tensors,
    )
    out: dict[str, GGMLQuantizationType | None] = {}
    for name in names:
        shape = tensors[name]
        if not quantized(name, shape):
            out[name] = None
            continue
        out[name] = _fallback(_mixture_type(name, _category(name), target, state), shape[0])
    return out
