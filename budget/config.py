"""A llama-server configuration, parsed from its command line and LLAMA_ARG_* environment.

INTERFACE (frozen; implementation in progress).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# llama.cpp's allowed --cache-type-k/-v values (common/arg.cpp kv_cache_types).
CACHE_TYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


class ConfigError(ValueError):
    """A flag value llama-server would reject at parse time (one line, user-facing)."""


@dataclass(frozen=True)
class ServerConfig:
    """The memory-relevant part of a llama-server configuration.

    ``None`` means "not given" (llama-server's default applies); the defaults that
    matter are resolved by the memory model, which lists them as assumptions.

    Attributes:
        argv: the command line as given, program name first (``llama-server`` or
            ``llama serve`` style), used to write edited command lines.
        env: the ``LLAMA_ARG_*`` variables that were applied (CLI overrides env).
        explicit: the canonical long names of every option the user set
            (by flag or env), e.g. ``{"ctx-size", "parallel"}``.
        model_path: ``-m``; None means router mode (or ``-hf``).
        n_ctx: ``-c``; None = unset (fit decides), 0 = explicit 0 (n_ctx_train).
        n_parallel: ``-np``; -1 = auto (4 slots, unified KV).
        kv_unified: ``-kvu`` / ``-no-kvu``; None = default (true only for -np auto).
        kv_unified_per_slot: ``--kv-unified-per-slot``.
        cache_type_k, cache_type_v: ``-ctk`` / ``-ctv`` (f16 default).
        flash_attn: ``on`` / ``off`` / ``auto``.
        n_gpu_layers: ``-ngl``; None = auto (all, fit may lower); -1 also auto.
        swa_full: ``--swa-full``.
        n_batch, n_ubatch: ``-b`` / ``-ub`` (2048 / 512).
        kv_offload: False with ``-nkvo``.
        cpu_moe: ``-cmoe``; n_cpu_moe: ``-ncmoe`` (0 = none).
        override_tensor: ``-ot`` patterns ``regex=buft``.
        fit: ``--fit`` on/off; fit_target_mib: per device margins; fit_ctx: ``-fitc``.
        cache_ram_mib: ``--cache-ram`` (8192; -1 = no limit; 0 = off).
        ctx_checkpoints: ``--ctx-checkpoints`` (32).
        host, port, api_prefix: where the server listens.
        api_key: from ``--api-key`` / ``LLAMA_API_KEY`` (never in repr or logs).
        api_key_file: ``--api-key-file`` path.
        alias: ``-a``.
        endpoint_slots, endpoint_metrics: ``--slots``/``--no-slots``, ``--metrics``.
        sleep_idle_seconds: ``--sleep-idle-seconds`` (-1 = off).
        draft_model: ``-md``; spec_type: ``--spec-type``.
        mmproj: ``-mm``.
    """

    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    explicit: frozenset[str] = frozenset()
    model_path: str | None = None
    n_ctx: int | None = None
    n_parallel: int = -1
    kv_unified: bool | None = None
    kv_unified_per_slot: int | None = None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: str = "auto"
    n_gpu_layers: int | None = None
    swa_full: bool = False
    n_batch: int = 2048
    n_ubatch: int = 512
    kv_offload: bool = True
    cpu_moe: bool = False
    n_cpu_moe: int = 0
    override_tensor: tuple[str, ...] = ()
    fit: bool = True
    fit_target_mib: tuple[int, ...] = (1024,)
    fit_ctx: int = 4096
    cache_ram_mib: int = 8192
    ctx_checkpoints: int = 32
    host: str = "127.0.0.1"
    port: int = 8080
    api_prefix: str = ""
    api_key: str | None = field(default=None, repr=False)
    api_key_file: str | None = None
    alias: str | None = None
    endpoint_slots: bool = True
    endpoint_metrics: bool = False
    sleep_idle_seconds: int = -1
    draft_model: str | None = None
    spec_type: str | None = None
    mmproj: str | None = None

    def command_line(self, **changes: object) -> list[str]:
        """The user's own command line, edited to apply ``changes``.

        Keyword names are ServerConfig field names (``cache_type_k="q8_0"``,
        ``n_parallel=2``, ``flash_attn="on"``, ``n_ctx=65536``...). Existing flags are
        replaced in place (whatever spelling the user used); missing ones are appended
        in their short form. API keys are replaced by ``$LLAMA_API_KEY``-style
        placeholders, never printed.
        """
        raise NotImplementedError

    def replace(self, **changes: object) -> ServerConfig:
        """A copy with fields changed (and ``explicit`` updated), argv untouched."""
        raise NotImplementedError


def parse_command_line(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServerConfig:
    """Parse a llama-server command line as llama-server would.

    Accepts short, long and ``--x=y`` forms, ``--some_flag`` underscore spellings, the
    ``llama serve``/``llama server`` binary, and ``LLAMA_ARG_*`` environment variables
    (applied first, CLI overrides). Unknown flags are kept in argv and ignored.

    Raises:
        ConfigError: a value llama-server would reject (bad number, unknown cache type,
            ``-np 0``, bad on/off/auto...). The message is one line naming the flag.
    """
    raise NotImplementedError
