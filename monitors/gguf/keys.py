"""gguf-py's constants (value types, ggml types, key names), loaded without numpy."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING


def _load_gguf_constants() -> ModuleType:
    """gguf-py's ``constants`` module, without importing the whole ``gguf`` package.

    ``import gguf`` pulls in numpy, yaml and the reader/writer (about 100 ms), while the
    constants (type sizes, key names, value types) need only the standard library. Loading
    that one file keeps ``kvwall plan`` and ``kvwall status`` quick to start
    (benchmarks/bench_plan.py). Falls back to the package when the file cannot be found.
    """
    import importlib.util

    loaded = sys.modules.get("gguf.constants")
    if loaded is not None:
        return loaded
    try:
        spec = importlib.util.find_spec("gguf")
        locations = spec.submodule_search_locations if spec is not None else None
        origin = Path(next(iter(locations or ()))) / "constants.py"
        file_spec = importlib.util.spec_from_file_location("kvwall.monitors._gguf_constants", origin)
        if file_spec is None or file_spec.loader is None:
            raise ImportError(origin)
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
        return module
    except (ImportError, AttributeError, OSError, StopIteration, TypeError):
        import gguf.constants

        return gguf.constants


if TYPE_CHECKING:
    import gguf.constants as gguf
else:
    gguf = _load_gguf_constants()

VT = gguf.GGUFValueType
GGMLQuantizationType = gguf.GGMLQuantizationType
GGML_QUANT_SIZES = gguf.GGML_QUANT_SIZES
LlamaFileType = gguf.LlamaFileType


def _key(cls: type, attr: str, literal: str) -> str:
    """A gguf-py key name, with the literal for gguf versions that predate it."""
    name = getattr(cls, attr, literal)
    return name if isinstance(name, str) else literal


K_ARCH = gguf.Keys.General.ARCHITECTURE
K_NAME = gguf.Keys.General.NAME
K_FILE_TYPE = gguf.Keys.General.FILE_TYPE
K_ALIGNMENT = gguf.Keys.General.ALIGNMENT
K_TOKENS = gguf.Keys.Tokenizer.LIST
K_SPLIT_NO = "split.no"
K_SPLIT_COUNT = "split.count"
K_SPLIT_TENSORS = "split.tensors.count"

_L = gguf.Keys.LLM
_A = gguf.Keys.Attention
_R = gguf.Keys.Rope
_S = gguf.Keys.SSM
K_CONTEXT = _L.CONTEXT_LENGTH
K_EMBD = _L.EMBEDDING_LENGTH
K_BLOCKS = _L.BLOCK_COUNT
K_NEXTN = _key(_L, "NEXTN_PREDICT_LAYERS", "{arch}.nextn_predict_layers")
K_VOCAB_SIZE = _key(_L, "VOCAB_SIZE", "{arch}.vocab_size")
K_FF = _L.FEED_FORWARD_LENGTH
K_EXPERTS = _L.EXPERT_COUNT
K_EXPERTS_USED = _L.EXPERT_USED_COUNT
K_TOKEN_SHIFT = _key(_L, "TOKEN_SHIFT_COUNT", "{arch}.token_shift_count")
K_FULL_ATTN_INTERVAL = _key(_L, "FULL_ATTENTION_INTERVAL", "{arch}.full_attention_interval")
K_HEADS = _A.HEAD_COUNT
K_HEADS_KV = _A.HEAD_COUNT_KV
K_KEY_LEN = _A.KEY_LENGTH
K_VALUE_LEN = _A.VALUE_LENGTH
K_KEY_LEN_SWA = _key(_A, "KEY_LENGTH_SWA", "{arch}.attention.key_length_swa")
K_VALUE_LEN_SWA = _key(_A, "VALUE_LENGTH_SWA", "{arch}.attention.value_length_swa")
K_KEY_LEN_MLA = _key(_A, "KEY_LENGTH_MLA", "{arch}.attention.key_length_mla")
K_VALUE_LEN_MLA = _key(_A, "VALUE_LENGTH_MLA", "{arch}.attention.value_length_mla")
K_KV_LORA = _A.KV_LORA_RANK
K_SWA = _A.SLIDING_WINDOW
K_SWA_PATTERN = _key(_A, "SLIDING_WINDOW_PATTERN", "{arch}.attention.sliding_window_pattern")
K_SHARED_KV = _key(_A, "SHARED_KV_LAYERS", "{arch}.attention.shared_kv_layers")
K_RECURRENT = _key(_A, "RECURRENT_LAYERS", "{arch}.attention.recurrent_layers")
K_ROT = _R.DIMENSION_COUNT
K_SSM_CONV = _S.CONV_KERNEL
K_SSM_INNER = _S.INNER_SIZE
K_SSM_STATE = _S.STATE_SIZE
K_SSM_DT = _S.TIME_STEP_RANK
K_SSM_GROUP = _key(_S, "GROUP_COUNT", "{arch}.ssm.group_count")
K_WKV = gguf.Keys.WKV.HEAD_SIZE
K_SHORTCONV = _key(getattr(gguf.Keys, "ShortConv", object), "L_CACHE", "{arch}.shortconv.l_cache")
