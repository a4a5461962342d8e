"""Advice for servers a manager starts: Ollama settings instead of a llama-server line.

Ollama writes its child's command line itself on every load, so an edited llama-server
command would be overwritten. Each piece of advice is restated as the Ollama settings that
produce the same child (``OLLAMA_KV_CACHE_TYPE``, ``OLLAMA_FLASH_ATTENTION``,
``OLLAMA_NUM_PARALLEL``, ``OLLAMA_CONTEXT_LENGTH`` or a Modelfile ``num_ctx``); advice that
Ollama has no setting for is dropped, with a note saying so.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.config import ConfigError, ServerConfig
from kvwall.budget.report import Advice

MANAGED_OLLAMA = "ollama"
MANAGED_LLAMA_SWAP = "llama-swap"

# The advice actions (budget.advice) Ollama can express through its settings.
_OLLAMA_ACTIONS = frozenset({"cache-q8_0", "cache-q4_0", "flash-attn-on", "fewer-slots",
                             "larger-context", "cache-q8_0-larger-context",
                             "fewer-slots-more-context"})
# "(-ctk q8_0 -ctv q8_0)" in a title: llama-server flags, which Ollama users never type.
_FLAGS_IN_TITLE = re.compile(r"\s*\(-[^)]*\)")
# Ollama quantizes the KV cache only with flash attention on.
_FA_ON = "OLLAMA_FLASH_ATTENTION=1"


@dataclass(frozen=True)
class ManagedAdvice:
    """Advice restated for a manager, and notes on what could not be restated."""

    advice: tuple[Advice, ...]
    notes: tuple[str, ...]


def _advised_config(command: str) -> ServerConfig | None:
    try:
        return parse_command_line(shlex.split(command), {})
    except (ConfigError, ValueError):
        return None


def _slot_ctx(config: ServerConfig) -> int | None:
    """Ollama's ``num_ctx``: its child runs with ``-c num_ctx x np``."""
    if config.n_ctx is None or config.n_ctx <= 0:
        return None
    return config.n_ctx // max(1, config.n_parallel)


def ollama_settings(current: ServerConfig, advised: ServerConfig) -> list[str]:
    """The ``NAME=value`` Ollama settings that turn ``current``'s child into ``advised``'s.

    Args:
        current: the child's configuration now.
        advised: the configuration the advice asks for.

    Returns:
        Settings in the order Ollama's docs list them; empty when nothing Ollama sets differs.
    """
    out: list[str] = []
    kv_changed = (advised.cache_type_k, advised.cache_type_v) != (
        current.cache_type_k, current.cache_type_v)
    if (advised.flash_attn == "on" and current.flash_attn != "on") or kv_changed:
        out.append(_FA_ON)
    if kv_changed:
        # One setting for K and V: Ollama quantizes both alike.
        out.append(f"OLLAMA_KV_CACHE_TYPE={advised.cache_type_k}")
    if advised.n_parallel != current.n_parallel and advised.n_parallel > 0:
        out.append(f"OLLAMA_NUM_PARALLEL={advised.n_parallel}")
    ctx = _slot_ctx(advised)
    if ctx is not None and ctx != _slot_ctx(current):
        out.append(f"OLLAMA_CONTEXT_LENGTH={ctx}")
    return out


def _ollama_command(settings: Sequence[str], model: str | None) -> str:
    serve = " ".join([*settings, "ollama serve"])
    ctx = [s.partition("=")[2] for s in settings if s.startswith("OLLAMA_CONTEXT_LENGTH=")]
    if ctx and model:
        # A model's own num_ctx (Modelfile) wins over OLLAMA_CONTEXT_LENGTH.
        return (f"{serve}   # or, for {model} only, a Modelfile with "
                f"FROM {model} and PARAMETER num_ctx {ctx[0]}")
    return serve


def ollama_advice(advice: Sequence[Advice], config: ServerConfig | None,
                  model: str | None) -> ManagedAdvice:
    """Restate advice for an Ollama-managed llama-server as Ollama settings.

    Args:
        advice: the llama-server advice for the child.
        config: the child's configuration now (None when its command line is unreadable).
        model: the Ollama model name, for a Modelfile ``num_ctx`` line.

    Returns:
        The restated advice (same savings and largest context; ``command`` is an
        ``ollama serve`` environment) and notes for what was dropped.
    """
    out: list[Advice] = []
    dropped: list[str] = []
    for a in advice:
        advised = _advised_config(a.command) if config is not None else None
        settings = (ollama_settings(config, advised)
                    if config is not None and advised is not None else [])
        if a.action not in _OLLAMA_ACTIONS or not settings:
            dropped.append(_FLAGS_IN_TITLE.sub("", a.title))
            continue
        out.append(replace(a, title=_FLAGS_IN_TITLE.sub("", a.title),
                           command=_ollama_command(settings, model)))
    notes = ["managed by Ollama: it writes this llama-server's command line itself, so the "
             "advice is given as Ollama settings (set them where `ollama serve` runs, then "
             "restart it)"]
    if dropped:
        notes.append("no Ollama setting for: " + "; ".join(dropped))
    return ManagedAdvice(tuple(out), tuple(notes))


def managed_advice(managed_by: str | None, advice: Sequence[Advice],
                   config: ServerConfig | None, model: str | None) -> ManagedAdvice | None:
    """Advice and notes for a managed server, None for one nobody manages.

    llama-swap runs the ``cmd`` of its config as written, so its advice stays a
    llama-server line that belongs in that ``cmd``.
    """
    if managed_by == MANAGED_OLLAMA:
        return ollama_advice(advice, config, model)
    if managed_by == MANAGED_LLAMA_SWAP:
        where = f"the `cmd` of model `{model}`" if model else "the model's `cmd`"
        return ManagedAdvice(tuple(advice), (
            f"managed by llama-swap: put the advised flags in {where} in llama-swap's "
            "config, not in this child's command line",))
    return None


__all__ = ["ManagedAdvice", "managed_advice", "ollama_advice", "ollama_settings"]
