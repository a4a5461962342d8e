"""Per-architecture rules of llama.cpp, and the one table of architecture families.

The rules resolve what ``load_arch_hparams`` (``src/models/*.cpp``) sets per architecture:
sliding-window layers, recurrent layers, keys a load requires. The families are the sets
llama.cpp tests an architecture against (``llm_arch_is_recurrent``, ``llm_arch_is_hybrid``,
...); ``budget/`` reads them from here.

Architecture rules implemented exactly (checked against llama.cpp b11434's sources):

- sliding window: gemma2 (window 4096 unless set, pattern 2), gemma3 (pattern 6 when a
  window is set), gemma3n (pattern 5, KV only in the first 20 layers), gemma4 and
  gemma4-assistant (bool pattern array, ``shared_kv_layers``), gemma-embedding (6,
  symmetric), cohere2 (4), cohere2moe (4, dense first), gpt-oss (2), llama4 (chunked 8192,
  pattern 4, unless ``sliding_window`` is present and 0), afmoe / mellum / olmo2 /
  muse-glimmer (4), exaone4 (4 and window 4096 for the 64-layer model), exaone-moe (4),
  plamo3 (8), smallthinker (4, dense first, window 4096), laguna (4, dense first),
  modern-bert (3, dense first, symmetric), lfm2 (every attention layer when a window is
  set), granite_swa / maple / mimo2 / spark2_5 / step35 / dots3note / dflash (pattern
  array), phi3 (SWA disabled by llama.cpp). Every other architecture has no SWA layer,
  even when its GGUF carries ``sliding_window`` (llama.cpp ignores it there, e.g.
  mistral/qwen2).
- recurrent layers: mamba, mamba2, rwkv6, rwkv6qwen2, rwkv7, arwkv7 (every layer); jamba,
  granitehybrid, lfm2, lfm2moe, plamo2, kimi-linear, kimi-k3, bailingmoe3 (``head_count_kv
  == 0`` among the main layers), glm5-next (``head_count_kv == 0``, every layer),
  nemotron_h / nemotron_h_moe (``head_count_kv == 0`` and ``feed_forward_length == 0``),
  falcon-h1 (every layer, which also keeps its attention KV), qwen3next / qwen35 /
  qwen35moe / qwen4exp / clef (``attention.recurrent_layers`` or ``full_attention_interval``,
  default 4), minimax-01 (same, default 8).
- MLA: any architecture whose GGUF has non-zero ``key_length_mla`` and ``value_length_mla``
  (deepseek2, deepseek32, glm-dsa, kimi-linear, kimi-k3, bailingmoe3, hy_v4, glm5-next,
  dots3note...); kimi-k3 and glm5-next use ``kv_lora_rank`` as the V head size.

Best effort (not modelled): deepseek4 compressed caches, DSA/MSA indexer caches, nanbeige
loops, graniteswitch's router layer, PLE caches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from kvwall.monitors.gguf.keys import (
    K_FULL_ATTN_INTERVAL,
    K_KEY_LEN_SWA,
    K_KV_LORA,
    K_RECURRENT,
    K_SHARED_KV,
    K_SHORTCONV,
    K_SSM_CONV,
    K_SSM_DT,
    K_SSM_GROUP,
    K_SSM_INNER,
    K_SSM_STATE,
    K_SWA,
    K_SWA_PATTERN,
    K_VALUE_LEN_SWA,
    K_WKV,
)
from kvwall.monitors.gguf.model import SwaType
from kvwall.monitors.gguf.reader import Meta


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# ---------------------------------------------------------------------------------------
# Architecture families (llama.cpp's names; src/llama-arch.cpp, src/llama-model.cpp)

NO_MEMORY_ARCHS = _names(
    "bert jina-bert-v2 jina-bert-v3 nomic-bert nomic-bert-moe neo-bert eurobert wavtokenizer-dec "
    "modern-bert gemma-embedding dream llada llada-moe rnd1 clef"
)
"""``llama_model::create_memory``: architectures without a KV cache (embeddings, diffusion)."""

RECURRENT_ARCHS = _names("mamba mamba2 rwkv6 rwkv6qwen2 rwkv7 arwkv7")
"""``llm_arch_is_recurrent``: every layer keeps recurrent state, no KV cache."""

HYBRID_ARCHS = _names(
    "jamba falcon-h1 plamo2 granitehybrid lfm2 lfm2moe nemotron_h nemotron_h_moe qwen3next "
    "kimi-linear bailingmoe3 kimi-k3 glm5-next qwen35 qwen35moe qwen4exp deepseek4 minimax-01"
)
"""``llm_arch_is_hybrid``: attention layers (KV cache) and recurrent layers (state)."""

HYBRID_NEXTN_FILTER_ARCHS = _names("qwen3next qwen35 qwen35moe qwen4exp minimax-01 glm5-next")
"""Hybrids whose attention/recurrent layer filters also exclude the NextN layers."""

RS_ROLLBACK_ARCHS = _names(
    "kimi-k3 qwen35 qwen35moe qwen4exp deepseek4 glm5-next nemotron_h nemotron_h_moe lfm2 "
    "lfm2moe bailingmoe3"
)
"""``llm_arch_supports_rs_rollback``: recurrent state that speculative decoding can roll back."""

SPECIAL_CACHE_ARCHS: Mapping[str, str] = MappingProxyType(
    {
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
)
"""Caches llama.cpp builds with extra parts the memory model does not describe exactly."""

RECURRENT_EVERY_LAYER_ARCHS = RECURRENT_ARCHS | {"falcon-h1"}
"""Every layer is recurrent (falcon-h1 also keeps attention KV in each)."""

RECURRENT_IF_NO_KV_ARCHS = _names(
    "jamba granitehybrid lfm2 lfm2moe plamo2 kimi-linear kimi-k3 bailingmoe3"
)
"""A main layer with ``head_count_kv == 0`` is recurrent."""

RECURRENT_IF_NO_KV_OR_FF_ARCHS = _names("nemotron_h nemotron_h_moe")
"""A main layer with ``head_count_kv == 0`` and ``feed_forward_length == 0`` is recurrent."""

RECURRENT_BY_INTERVAL: Mapping[str, int] = MappingProxyType(
    {"qwen3next": 4, "qwen35": 4, "qwen35moe": 4, "qwen4exp": 4, "clef": 4, "minimax-01": 8}
)
"""Recurrent layers from ``recurrent_layers``, else all but every N-th (default N here)."""

SWA_ARRAY_ONLY_ARCHS = _names("gemma4 gemma4-assistant granite_swa maple mimo2 spark2_5 step35 dots3note")
"""SWA layers only from the ``sliding_window_pattern`` array (no period default)."""

MLA_LATENT_V_ARCHS = _names("kimi-k3 glm5-next")
"""MLA models whose V head size is ``kv_lora_rank`` (the cache holds the compressed latent)."""

_SSM4 = (K_SSM_CONV, K_SSM_INNER, K_SSM_STATE, K_SSM_DT)
_SSM5 = (*_SSM4, K_SSM_GROUP)
_SWA_ARRAY = (K_SWA, K_SWA_PATTERN)
REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "mamba": _SSM4,
        "mamba2": _SSM5,
        "jamba": _SSM4,
        **dict.fromkeys(
            ["granitehybrid", "nemotron_h", "nemotron_h_moe", "falcon-h1", "plamo2", "qwen3next", "qwen35", "qwen35moe"],
            _SSM5,
        ),
        **dict.fromkeys(["rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"], (K_WKV,)),
        **dict.fromkeys(["lfm2", "lfm2moe"], (K_SHORTCONV,)),
        "deepseek2": (K_KV_LORA,),
        **dict.fromkeys(
            ["cohere2", "cohere2moe", "gemma3n", "gemma-embedding", "gpt-oss", "exaone-moe", "muse-glimmer"],
            (K_SWA,),
        ),
        **dict.fromkeys(
            ["gemma4", "gemma4-assistant"], (*_SWA_ARRAY, K_KEY_LEN_SWA, K_VALUE_LEN_SWA)
        ),
        **dict.fromkeys(["granite_swa", "maple", "mimo2", "spark2_5", "step35", "dots3note"], _SWA_ARRAY),
    }
)
"""Keys llama.cpp requires for an architecture beyond the general ones (load fails without)."""


# ---------------------------------------------------------------------------------------
# Per-architecture rules


@dataclass(frozen=True)
class SwaLayout:
    """Where the sliding window applies: llama.cpp's ``swa_type``, window, per-layer flags."""

    swa_type: SwaType
    n_swa: int
    layers: list[bool]


def n_layer_kv_from_start(m: Meta, n_layer_all: int) -> int:
    """-1, or the number of leading layers owning KV (Gemma-3n/4 share the rest)."""
    if m.arch == "gemma3n":
        return 20
    if m.arch == "gemma4":
        return n_layer_all - m.integer(K_SHARED_KV, 0)
    return -1


def _swa_pattern(
    m: Meta, n_layer: int, n_layer_all: int, period: int, dense_first: bool = False
) -> list[bool]:
    """llama_model_base::load_swa_pattern + llama_hparams::set_swa_pattern."""
    arr = m.bool_array(K_SWA_PATTERN)
    layers = [False] * n_layer_all
    if arr is not None:
        for il, v in enumerate(arr[:n_layer_all]):
            layers[il] = v
        return layers
    if m.has(K_SWA_PATTERN):
        period = m.integer(K_SWA_PATTERN)
    for il in range(n_layer):
        if dense_first:
            layers[il] = period == 0 or il % period != 0
        else:
            layers[il] = period == 0 or il % period < period - 1
    return layers


def resolve_swa(m: Meta, n_layer: int, n_layer_all: int, recurrent: list[bool]) -> SwaLayout:
    """(swa_type, n_swa, per-layer SWA flags) as the arch's load_arch_hparams sets them."""
    arch = m.arch
    none = SwaLayout("none", 0, [False] * n_layer_all)
    window = m.integer(K_SWA, 0)

    def pattern(period: int, dense_first: bool = False) -> list[bool]:
        return _swa_pattern(m, n_layer, n_layer_all, period, dense_first)

    if arch == "gemma2":
        return SwaLayout("standard", m.integer(K_SWA, 4096), pattern(2))
    if arch in ("gemma3", "olmo2", "afmoe", "mellum", "plamo3"):
        if window <= 0:
            return none
        period = {"gemma3": 6, "plamo3": 8}.get(arch, 4)
        return SwaLayout("standard", window, pattern(period))
    if arch == "gemma3n":
        return SwaLayout("standard", window, pattern(5))
    if arch == "gemma-embedding":
        return SwaLayout("symmetric", window, pattern(6))
    if arch in ("cohere2", "exaone-moe", "muse-glimmer"):
        return SwaLayout("standard", window, pattern(4))
    if arch == "cohere2moe":
        return SwaLayout("standard", window, pattern(4, dense_first=True))
    if arch == "gpt-oss":
        return SwaLayout("standard", window, pattern(2))
    if arch == "llama4":
        if m.has(K_SWA) and window == 0:
            return none
        return SwaLayout("chunked", 8192, pattern(4))
    if arch == "exaone4":
        if n_layer == 64:
            return SwaLayout("standard", m.integer(K_SWA, 4096), pattern(4))
        return none
    if arch == "smallthinker":
        if window <= 0:
            return none
        return SwaLayout("standard", 4096, pattern(4, dense_first=True))
    if arch == "laguna":
        if window <= 0:
            return none
        return SwaLayout("standard", window, pattern(4, dense_first=True))
    if arch == "modern-bert":
        if window <= 0:
            return none
        return SwaLayout("symmetric", window, pattern(3, dense_first=True))
    if arch == "lfm2":
        if window <= 0:
            return none
        layers = [il < n_layer and not recurrent[il] for il in range(n_layer_all)]
        return SwaLayout("standard", window, layers)
    if arch in SWA_ARRAY_ONLY_ARCHS or (arch == "dflash" and window > 0):
        arr = m.bool_array(K_SWA_PATTERN) or ()
        layers = [il < len(arr) and arr[il] for il in range(n_layer_all)]
        return SwaLayout("standard", window, layers)
    return none


def resolve_recurrent(
    m: Meta, n_layer: int, n_layer_all: int, n_head_kv: tuple[int, ...], n_ff: tuple[int, ...]
) -> list[bool]:
    """Per layer, True for a recurrent (SSM/RWKV/...) layer, as load_arch_hparams marks them."""
    arch = m.arch
    if arch in RECURRENT_EVERY_LAYER_ARCHS:
        return [True] * n_layer_all
    if arch in RECURRENT_IF_NO_KV_ARCHS:
        return [il < n_layer and n_head_kv[il] == 0 for il in range(n_layer_all)]
    if arch == "glm5-next":
        return [n_head_kv[il] == 0 for il in range(n_layer_all)]
    if arch in RECURRENT_IF_NO_KV_OR_FF_ARCHS:
        return [
            il < n_layer and n_head_kv[il] == 0 and n_ff[il] == 0 for il in range(n_layer_all)
        ]
    if arch in RECURRENT_BY_INTERVAL:
        if m.has(K_RECURRENT):
            return [bool(v) for v in m.per_layer(K_RECURRENT, n_layer_all, ())]
        interval = m.integer(K_FULL_ATTN_INTERVAL, RECURRENT_BY_INTERVAL[arch])
        if interval <= 0:
            raise m.fail(f"'{m.name(K_FULL_ATTN_INTERVAL)}' must be positive, not {interval}")
        return [il < n_layer and (il + 1) % interval != 0 for il in range(n_layer_all)]
    return [False] * n_layer_all
