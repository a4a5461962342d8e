"""What llama-server refuses: its start-up checks, in its order, with its messages.

Two kinds: :class:`LaunchError` for a command line or model file llama-server will not
start with at all (raised), and the configuration checks of llama_init_from_model and
the llama_context constructor (recorded in the plan's ``errors``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

from kvwall.budget.cachetypes import QUANTIZED, TYPE_SIZES, needs_flash_attention
from kvwall.budget.config import ServerConfig
from kvwall.budget.memory.layout import LLAMA_MAX_SEQ, head_k, head_v, model_layout
from kvwall.budget.memory.resolve import Resolved
from kvwall.monitors.gguf import ModelInfo


class LaunchError(ValueError):
    """llama-server would not start with this command line or model file (one line)."""


def check_command_line(config: ServerConfig) -> None:
    """Refuse what llama-server's argument parser rejects that the config parser kept.

    Raises:
        LaunchError: an argument llama-server does not know.
    """
    if config.unknown_flags:
        raise LaunchError(
            f"llama-server would refuse this command line: invalid argument: "
            f"{config.unknown_flags[0]} (not an argument of llama-server)"
        )


def check_model_file(model: ModelInfo, config: ServerConfig) -> None:
    """Refuse a model file llama-server on this machine will not load.

    Raises:
        LaunchError: a big-endian GGUF on a little-endian machine, or a split model
            named by a shard other than its first.
    """
    if model.big_endian and sys.byteorder == "little":
        raise LaunchError(
            f"{config.model_path}: a big-endian GGUF; llama-server on this little-endian "
            "machine refuses it (GGUF version read byte-swapped: endianness mismatch)"
        )
    path = config.model_path or model.path
    if len(model.paths) > 1 and os.path.abspath(path) != os.path.abspath(model.path):
        raise LaunchError(
            f"{config.model_path}: llama-server loads a split model from its first "
            f"shard only (it refuses this one: illegal split file idx); use -m {model.path}"
        )


_Check = Callable[[ModelInfo, ServerConfig, Resolved], "str | None"]


@dataclass(frozen=True)
class Verdict:
    """What llama.cpp's checks make of a configuration.

    Attributes:
        rv: the resolved configuration, with ``-fa auto`` switched on where required.
        notes: why flash attention was switched on, in the user's words.
        error: the first refusal, in llama.cpp's words; None when accepted.
    """

    rv: Resolved
    notes: tuple[str, ...]
    error: str | None


def _load_checks(model: ModelInfo, config: ServerConfig, rv: Resolved, n_ctx_req: int) -> str | None:
    """llama_prepare_model_devices (at model load) and the first llama_init_from_model checks."""
    if config.split_mode == "tensor" and not rv.gpu_names:
        return "LLAMA_SPLIT_MODE_TENSOR needs >= 1 devices"
    if config.n_batch == 0 and config.n_ubatch == 0:
        return "n_batch and n_ubatch cannot both be zero"
    if model.n_ctx_train == 0 and n_ctx_req == 0:
        return "n_ctx and model->hparams.n_ctx_train cannot both be zero"
    return None


def _flash_attn_checks(model: ModelInfo, config: ServerConfig, rv: Resolved) -> Verdict:
    """What needs flash attention; ``-fa auto`` is switched on where it is needed."""
    tk, tv = config.cache_type_k, config.cache_type_v
    fa = rv.fa
    notes: list[str] = []

    def verdict(error: str | None) -> Verdict:
        return Verdict(replace(rv, fa=fa), tuple(notes), error)

    if config.split_mode == "tensor":
        if fa == "auto":
            fa = "on"
            notes.append("flash attention switched on: llama.cpp requires it for -sm tensor")
        elif fa == "off":
            return verdict("SPLIT_MODE_TENSOR requires flash_attn to be enabled")
    if (model.is_mla or model.architecture == "deepseek4") and tk != tv:
        return verdict(f"model does not support different K ({tk}) and V ({tv}) cache types")
    if needs_flash_attention(tv) and fa != "on":
        if fa != "auto":
            return verdict("quantized V cache requires flash_attn to be enabled")
        fa = "on"
        notes.append(f"flash attention switched on: llama.cpp requires it for the quantized V cache ({tv})")
    return verdict(None)


def _row_block_checks(model: ModelInfo, config: ServerConfig, rv: Resolved) -> str | None:
    """Without flash attention, a quantized cache's rows must hold whole blocks (ggml_view)."""
    if rv.fa != "off":
        return None
    lay = model_layout(model)
    v_widths = () if lay.is_mla else lay.v_width
    for name, type_name, widths in (("K", config.cache_type_k, lay.k_width), ("V", config.cache_type_v, v_widths)):
        if type_name not in QUANTIZED:
            continue
        blck = TYPE_SIZES[type_name][0]
        for il, width in zip(lay.kv_layers, widths, strict=False):
            if width % blck:
                return (
                    f"{name} cache type {type_name} needs rows that are a multiple of its block "
                    f"size ({blck}), but layer {il} has n_embd_{name.lower()}_gqa={width}: "
                    "llama.cpp aborts (GGML_ASSERT in ggml_view)"
                )
    return None


def _head_block_checks(model: ModelInfo, config: ServerConfig, rv: Resolved) -> str | None:
    """With flash attention, a quantized cache's block size must divide the head size."""
    if rv.fa == "off":
        return None
    for name, type_name, sizes in (("K", config.cache_type_k, "k"), ("V", config.cache_type_v, "v")):
        if type_name not in QUANTIZED:
            continue
        blck = TYPE_SIZES[type_name][0]
        for il in range(model.n_layer):
            head = head_k(model, il) if sizes == "k" else head_v(model, il)
            if head % blck:
                return (
                    f"{name} cache type {type_name} with block size {blck} does not divide "
                    f"n_embd_head_{sizes}={head}"
                )
    return None


def _context_checks(model: ModelInfo, config: ServerConfig, rv: Resolved) -> str | None:
    """The llama_context constructor's checks (they come after llama_init_from_model's)."""
    if rv.n_seq > LLAMA_MAX_SEQ:
        return f"n_seq_max must be <= {LLAMA_MAX_SEQ}"
    if config.n_batch == 0:  # n_batch = min(n_ctx, 0) = 0 -> no output rows can be reserved
        return (
            f"-b 0 with -ub {config.n_ubatch}: a batch of 0 tokens; llama.cpp aborts "
            "(GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max) in llama-context.cpp)"
        )
    return None


_LATER_CHECKS: tuple[_Check, ...] = (_row_block_checks, _head_block_checks, _context_checks)


def check_config(model: ModelInfo, config: ServerConfig, rv: Resolved, n_ctx_req: int) -> Verdict:
    """llama.cpp's configuration checks, in its order, up to the first refusal.

    Args:
        model: the GGUF header.
        config: the parsed command line.
        rv: the resolved configuration.
        n_ctx_req: the context asked of llama_context (0 = the trained context).
    """
    error = _load_checks(model, config, rv, n_ctx_req)
    if error:
        return Verdict(rv, (), error)
    verdict = _flash_attn_checks(model, config, rv)
    if verdict.error:
        return verdict
    for check in _LATER_CHECKS:
        error = check(model, config, verdict.rv)
        if error:
            return replace(verdict, error=error)
    return verdict
