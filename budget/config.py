"""A llama-server configuration (``ServerConfig``); ``budget/cmdline`` parses and edits it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from kvwall.budget.cmdline.edit import edited_command_line, masked_argv
from kvwall.budget.cmdline.options import field_option


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
        n_gpu_layers: ``-ngl``; None = auto (all, fit may lower); -1 also auto;
            -2 = ``all`` (explicit, fit keeps it).
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
        spec_draft_n_max: ``--spec-draft-n-max`` (3): extra recurrent-state rows with MTP.
        embedding: ``--embedding`` (the server then reserves outputs for a whole batch).
        split_mode: ``-sm`` (None = layer).
        tensor_split: ``-ts`` proportions, empty = by free memory.
        main_gpu: ``-mg``, the device index ``-sm none`` keeps everything on.
        device: ``-dev`` as given (``Vulkan0,Vulkan1``, ``none``); None = every GPU.
        load_mode: ``-lm`` (``auto``, ``mmap``, ``none``...); None = auto (mmap).
        unknown_flags: arguments this build of llama-server does not know (it would
            refuse them); kept in argv, ignored by the model.
        notes: parse-time remarks for the user (``-c 8k`` is read as 8 by llama-server,
            ``--x=y`` is a kvwall convenience llama-server itself rejects...).
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
    spec_draft_n_max: int = 3
    embedding: bool = False
    split_mode: str | None = None
    tensor_split: tuple[float, ...] = ()
    main_gpu: int = 0
    device: str | None = None
    load_mode: str | None = None
    unknown_flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # like the generated repr, with secrets in argv masked (the key itself is repr=False)
        parts = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name == "argv" and value:
                value = tuple(masked_argv(value))
            parts.append(f"{f.name}={value!r}")
        return f"ServerConfig({', '.join(parts)})"

    def command_line(self, **changes: object) -> list[str]:
        """The user's own command line, edited to apply ``changes``.

        Keyword names are ServerConfig field names (``cache_type_k="q8_0"``,
        ``n_parallel=2``, ``flash_attn="on"``, ``n_ctx=65536``...). Existing flags are
        replaced in place (whatever spelling the user used); missing ones are appended
        in their short form. API keys are replaced by ``$LLAMA_API_KEY``-style
        placeholders, never printed.

        Raises:
            KeyError: a change names a field that has no llama-server flag.
        """
        return edited_command_line(self.argv, changes)

    def replace(self, **changes: object) -> ServerConfig:
        """A copy with fields changed (and ``explicit`` updated), argv untouched."""
        explicit = set(self.explicit)
        for name in changes:
            opt = field_option(name)
            if opt is not None:
                explicit.add(opt.name)
        # the values are the fields' own types; mypy cannot check ``**changes: object``
        return dataclasses.replace(self, explicit=frozenset(explicit), **changes)  # type: ignore[arg-type]

    def is_explicit(self, name: str) -> bool:
        """Whether the field ``name`` was set by the user (flag or env)."""
        opt = field_option(name)
        return opt is not None and opt.name in self.explicit
