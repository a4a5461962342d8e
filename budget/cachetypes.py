"""The KV cache types llama.cpp accepts: names, ggml sizes, and the flash-attention rule."""

from __future__ import annotations

from typing import Literal

# llama.cpp's allowed --cache-type-k/-v values (common/arg.cpp kv_cache_types).
CacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
CACHE_TYPES: tuple[CacheType, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

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


def row_bytes(type_name: str, n_elements: int) -> int:
    """``ggml_row_size``: bytes of ``n_elements`` values of ``type_name``.

    Raises:
        KeyError: not a cache type.
    """
    blck, size = TYPE_SIZES[type_name]
    return size * n_elements // blck


def needs_flash_attention(cache_type_v: str) -> bool:
    """llama.cpp's rule: a quantized V cache runs only with flash attention
    (llama_init_from_model refuses ``-fa off``; ``-fa auto`` switches it on)."""
    return cache_type_v in QUANTIZED


def cache_type_changes(cache_type: str, flash_attn: str) -> dict[str, str]:
    """The ServerConfig changes that set both caches to ``cache_type``, switching flash
    attention on where the current ``flash_attn`` mode (``on``/``off``/``auto``) is off
    and the type needs it."""
    changes = {"cache_type_k": cache_type, "cache_type_v": cache_type}
    if flash_attn == "off" and needs_flash_attention(cache_type):
        changes["flash_attn"] = "on"
    return changes
