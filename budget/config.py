"""A llama-server configuration, parsed from its command line and LLAMA_ARG_* environment."""

from __future__ import annotations

import dataclasses
import re
import shlex
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from kvwall.budget.cachetypes import CACHE_TYPES
from kvwall.budget.llama_args import OPTIONS

# Placeholders written instead of secrets when a command line is rendered.
API_KEY_PLACEHOLDER = "$LLAMA_API_KEY"
HF_TOKEN_PLACEHOLDER = "$HF_TOKEN"

_TRUTHY = ("on", "enabled", "true", "1")
_FALSEY = ("off", "disabled", "false", "0")
_AUTOY = ("auto", "-1")


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
                value = tuple(_mask_secrets(list(value), _first_option_index(value)))
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
        argv = list(self.argv) or ["llama-server"]
        start = _first_option_index(argv)
        for name, value in changes.items():
            argv = _apply_change(argv, start, name, value)
        return _mask_secrets(argv, start)

    def replace(self, **changes: object) -> ServerConfig:
        """A copy with fields changed (and ``explicit`` updated), argv untouched."""
        explicit = set(self.explicit)
        for name in changes:
            spec = _FIELD_OPTIONS.get(name)
            if spec is not None:
                explicit.add(_canonical(spec[0]))
        return dataclasses.replace(self, explicit=frozenset(explicit), **changes)

    def is_explicit(self, name: str) -> bool:
        """Whether the field ``name`` was set by the user (flag or env)."""
        spec = _FIELD_OPTIONS.get(name)
        return spec is not None and _canonical(spec[0]) in self.explicit


def render_command(argv: Sequence[str]) -> str:
    """One shell line for ``argv``; secret placeholders stay expandable (``"$LLAMA_API_KEY"``)."""
    parts = []
    for arg in argv:
        for placeholder in (API_KEY_PLACEHOLDER, HF_TOKEN_PLACEHOLDER):
            if arg.endswith(placeholder):
                prefix = arg[: -len(placeholder)]
                parts.append((shlex.quote(prefix) if prefix else "") + f'"{placeholder}"')
                break
        else:
            parts.append(shlex.quote(arg))
    return " ".join(parts)


# ---------------------------------------------------------------------------
# option table

# field -> (a flag that identifies the option in OPTIONS, value kind for the field)
_FIELD_OPTIONS: dict[str, tuple[str, str]] = {
    "model_path": ("--model", "str"),
    "n_ctx": ("--ctx-size", "int"),
    "n_parallel": ("--parallel", "int"),
    "kv_unified": ("--kv-unified", "bool"),
    "kv_unified_per_slot": ("--kv-unified-per-slot", "int"),
    "cache_type_k": ("--cache-type-k", "cache"),
    "cache_type_v": ("--cache-type-v", "cache"),
    "flash_attn": ("--flash-attn", "fa"),
    "n_gpu_layers": ("--gpu-layers", "ngl"),
    "swa_full": ("--swa-full", "void"),
    "n_batch": ("--batch-size", "int"),
    "n_ubatch": ("--ubatch-size", "int"),
    "kv_offload": ("--kv-offload", "bool"),
    "cpu_moe": ("--cpu-moe", "void"),
    "n_cpu_moe": ("--n-cpu-moe", "int"),
    "override_tensor": ("--override-tensor", "ot"),
    "fit": ("--fit", "onoff"),
    "fit_target_mib": ("--fit-target", "fitt"),
    "fit_ctx": ("--fit-ctx", "int"),
    "cache_ram_mib": ("--cache-ram", "int"),
    "ctx_checkpoints": ("--ctx-checkpoints", "int"),
    "host": ("--host", "str"),
    "port": ("--port", "int"),
    "api_prefix": ("--api-prefix", "str"),
    "api_key": ("--api-key", "str"),
    "api_key_file": ("--api-key-file", "str"),
    "alias": ("--alias", "str"),
    "endpoint_slots": ("--slots", "bool"),
    "endpoint_metrics": ("--metrics", "void"),
    "sleep_idle_seconds": ("--sleep-idle-seconds", "int"),
    "draft_model": ("--spec-draft-model", "str"),
    "spec_type": ("--spec-type", "str"),
    "mmproj": ("--mmproj", "str"),
    "spec_draft_n_max": ("--spec-draft-n-max", "int"),
    "embedding": ("--embedding", "void"),
    "split_mode": ("--split-mode", "str"),
    "tensor_split": ("--tensor-split", "ts"),
}

_SECRET_FLAGS = {"--api-key": API_KEY_PLACEHOLDER, "--hf-token": HF_TOKEN_PLACEHOLDER}


@dataclass(frozen=True)
class _Option:
    flags: tuple[str, ...]
    neg: tuple[str, ...]
    kind: str  # void, bool, int, str, str2
    env: str | None
    server: bool

    @property
    def n_values(self) -> int:
        return {"void": 0, "bool": 0, "int": 1, "str": 1, "str2": 2}[self.kind]

    @property
    def long(self) -> str:
        return next((f for f in self.flags if f.startswith("--")), self.flags[0])

    @property
    def short(self) -> str:
        return min(self.flags, key=len)


@lru_cache(maxsize=1)
def _option_index() -> dict[str, tuple[_Option, bool]]:
    """flag spelling -> (option, is_positive); server options win over others."""
    index: dict[str, tuple[_Option, bool]] = {}
    for flags, neg, kind, env, server in OPTIONS:
        opt = _Option(flags, neg, kind, env, server)
        for spelling, positive in [(f, True) for f in flags] + [(f, False) for f in neg]:
            if spelling in index and index[spelling][0].server and not server:
                continue
            index[spelling] = (opt, positive)
    return index


def _lookup(flag: str) -> tuple[_Option, bool] | None:
    if flag.startswith("--"):
        flag = flag.replace("_", "-")
    return _option_index().get(flag)


def _canonical(flag: str) -> str:
    found = _lookup(flag)
    assert found is not None, flag
    return found[0].long.lstrip("-")


@lru_cache(maxsize=1)
def _env_fields() -> dict[str, tuple[str, _Option]]:
    """env variable -> (field, option) for the fields we model."""
    out: dict[str, tuple[str, _Option]] = {}
    for name, (flag, _kind) in _FIELD_OPTIONS.items():
        found = _lookup(flag)
        if found and found[0].env:
            out[found[0].env] = (name, found[0])
    return out


# ---------------------------------------------------------------------------
# value conversion, as llama-server's handlers do it


_TLS = threading.local()  # notes collected while one parse_command_line call runs


def _notes() -> list[str]:
    notes = getattr(_TLS, "notes", None)
    if notes is None:
        notes = _TLS.notes = []
    return notes


def _stoi(value: str, flag: str, *, unsigned_ll: bool = False) -> int:
    """C++ ``std::stoi``: leading blanks, sign, digits; trailing text ignored."""
    m = re.match(r"\s*([+-]?\d+)", value)
    if not m:
        raise ConfigError(f"{flag}: invalid value {value!r} (expected a whole number)")
    n = int(m.group(1))
    if m.end() != len(value):
        _notes().append(
            f"{flag} {value}: llama-server reads this as {n} (it ignores what follows the number)"
        )
    limit = 2**64 if unsigned_ll else 2**31
    if not (-limit <= n < limit):
        raise ConfigError(f"{flag}: value {value!r} is out of range")
    return n


LLAMA_MAX_DEVICES = 16  # llama_max_devices(): -ts takes fewer values than this
_SPLIT_MODES = ("none", "layer", "row", "tensor")


def _convert(name: str, kind: str, value: str, flag: str, current: ServerConfig) -> object:
    if kind == "int":
        n = _stoi(value, flag)
        if name == "n_parallel" and n == 0:
            raise ConfigError(f"{flag}: invalid value for n_parallel: {value!r} (0 is not allowed)")
        if name == "n_cpu_moe" and n < 0:
            raise ConfigError(f"{flag}: invalid value {value!r} (must not be negative)")
        if name == "sleep_idle_seconds" and (n == 0 or n < -1):
            raise ConfigError(f"{flag}: invalid value {value!r}: cannot be 0 or less than -1")
        return n
    if kind == "cache":
        if value not in CACHE_TYPES:
            raise ConfigError(
                f"{flag}: Unsupported cache type: {value} (allowed: {', '.join(CACHE_TYPES)})"
            )
        return value
    if kind == "fa":
        if value in _TRUTHY:
            return "on"
        if value in _FALSEY:
            return "off"
        if value in _AUTOY:
            return "auto"
        raise ConfigError(f"{flag}: unknown value for --flash-attn: {value!r} (on, off or auto)")
    if kind == "onoff":
        if value in _TRUTHY:
            return True
        if value in _FALSEY:
            return False
        raise ConfigError(f"{flag}: unknown value for {flag}: {value!r} (on or off)")
    if kind == "ngl":
        if value == "auto":
            return None
        if value == "all":
            return -2
        n = _stoi(value, flag)
        return None if n == -1 else n
    if kind == "ot":
        for part in value.split(","):
            if "=" not in part:
                raise ConfigError(f"{flag}: invalid value {value!r} (expected pattern=buffer_type)")
        return current.override_tensor + tuple(value.split(","))
    if kind == "fitt":
        parts = re.split(r"[,/]+", value)
        if len(parts) >= LLAMA_MAX_DEVICES:
            raise ConfigError(
                f"{flag}: got {len(parts)} input configs, but system only has {LLAMA_MAX_DEVICES} devices"
            )
        return tuple(_stoi(p, flag, unsigned_ll=True) for p in parts)
    if kind == "ts":
        parts = [p for p in re.split(r"[,/]+", value) if p]
        if len(parts) >= LLAMA_MAX_DEVICES:
            raise ConfigError(
                f"{flag}: got {len(parts)} input configs, but system only has {LLAMA_MAX_DEVICES} devices"
            )
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            raise ConfigError(f"{flag}: invalid value {value!r} (expected numbers like 3,1)") from None
    if name == "split_mode" and value not in _SPLIT_MODES:
        raise ConfigError(f"{flag}: invalid value {value!r} ({', '.join(_SPLIT_MODES)})")
    return value


def _parse_bool_env(value: str, env_name: str) -> bool:
    if value in _TRUTHY:
        return True
    if value in _FALSEY:
        return False
    raise ConfigError(f"{env_name}: invalid boolean value {value!r} (on/off, true/false, 1/0)")


# ---------------------------------------------------------------------------
# parsing


def _first_option_index(argv: Sequence[str]) -> int:
    """Where options start: 1 for ``llama-server``, 2 for ``llama serve``/``llama server``."""
    if len(argv) >= 2 and _basename(argv[0]) in ("llama", "llama.exe") and argv[1] in ("serve", "server"):
        return 2
    return 1


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path)[-1]


def _split_eq(arg: str) -> tuple[str, str | None]:
    """``--x=y`` -> (``--x``, ``y``); anything else -> (arg, None)."""
    if arg.startswith("-") and "=" in arg:
        flag, value = arg.split("=", 1)
        if _lookup(flag) is not None:
            return flag, value
    return arg, None


def parse_command_line(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServerConfig:
    """Parse a llama-server command line as llama-server would.

    Accepts short, long and ``--x=y`` forms, ``--some_flag`` underscore spellings, the
    ``llama serve``/``llama server`` binary, and ``LLAMA_ARG_*`` environment variables
    (applied first, CLI overrides). Unknown flags are kept in argv and ignored.

    Args:
        argv: program name first (``["llama-server", "-m", "m.gguf", ...]``).
        env: the server's environment (only ``LLAMA_*`` variables matter); None = none.

    Returns:
        The configuration, llama-server's defaults for everything unset.

    Raises:
        ConfigError: a value llama-server would reject (bad number, unknown cache type,
            ``-np 0``, bad on/off/auto...). The message is one line naming the flag.
    """
    _notes().clear()
    argv = [str(a) for a in argv]
    env = dict(env or {})
    values: dict[str, object] = {}
    explicit: set[str] = set()
    applied_env: dict[str, str] = {}
    proto = ServerConfig()

    def current() -> ServerConfig:
        return dataclasses.replace(proto, **values)

    # environment first
    env_fields = _env_fields()
    for env_name, (name, opt) in env_fields.items():
        raw: str | None = None
        if opt.neg and env_name.startswith("LLAMA_ARG_"):
            neg_env = env_name.replace("LLAMA_ARG_", "LLAMA_ARG_NO_", 1)
            if neg_env in env:
                raw = "0"
                applied_env[neg_env] = env[neg_env]
        if raw is None and env_name in env:
            raw = env[env_name]
            applied_env[env_name] = raw
        if raw is None:
            continue
        kind = _FIELD_OPTIONS[name][1]
        if kind == "void":
            if raw in _TRUTHY:
                values[name] = True
                explicit.add(opt.long.lstrip("-"))
            continue
        if kind == "bool":
            values[name] = _parse_bool_env(raw, env_name)
        else:
            try:
                values[name] = _convert(name, kind, raw, env_name, current())
            except ConfigError as exc:
                raise ConfigError(f"environment variable {exc}") from None
        explicit.add(opt.long.lstrip("-"))

    # then the command line
    unknown: list[str] = []
    fields_by_option = {id(_lookup(flag)[0]): name for name, (flag, _) in _FIELD_OPTIONS.items()}
    i = _first_option_index(argv)
    while i < len(argv):
        arg = argv[i]
        flag, inline = _split_eq(arg)
        found = _lookup(flag)
        if found is None:
            unknown.append(arg)
            i += 1
            continue
        opt, positive = found
        if inline is not None:
            shown = next((p for f, p in _SECRET_FLAGS.items() if f in opt.flags), inline)
            _notes().append(
                f"{flag}={shown}: read as {flag} {shown}; llama-server itself wants the value "
                "as a separate argument"
            )
        if not opt.server:
            unknown.append(arg)
        n = opt.n_values
        if inline is not None:
            vals = [inline]
            i += 1
        else:
            vals = argv[i + 1 : i + 1 + n]
            if len(vals) < n:
                raise ConfigError(f"{flag}: expected a value")
            i += 1 + n
        name = fields_by_option.get(id(opt))
        if name is None or not opt.server:
            continue
        kind = _FIELD_OPTIONS[name][1]
        if kind == "void":
            values[name] = True
        elif kind == "bool":
            if inline is not None:
                values[name] = _parse_bool_env(inline, flag) == positive
            else:
                values[name] = positive
        else:
            values[name] = _convert(name, kind, vals[0], flag, current())
        explicit.add(opt.long.lstrip("-"))

    return ServerConfig(
        argv=tuple(argv),
        env=applied_env,
        explicit=frozenset(explicit),
        unknown_flags=tuple(unknown),
        notes=tuple(dict.fromkeys(_notes())),
        **values,
    )


# ---------------------------------------------------------------------------
# editing a command line


def _format_value(name: str, value: object) -> str | None:
    """The flag value text for a field value; None = the flag must be absent."""
    if value is None:
        return None
    if name == "n_gpu_layers":
        return {-1: "auto", -2: "all"}.get(int(value), str(value))  # type: ignore[arg-type]
    if name == "fit":
        return "on" if value else "off"
    if name == "fit_target_mib":
        return ",".join(str(v) for v in value)  # type: ignore[union-attr]
    if name == "tensor_split":
        return ",".join(f"{v:g}" for v in value)  # type: ignore[union-attr]
    if name == "override_tensor":
        return ",".join(value) if value else None  # type: ignore[arg-type]
    return str(value)


def _walk(argv: list[str], start: int) -> Iterator[tuple[int, str, str | None, _Option, bool, int]]:
    """Each known option in ``argv[start:]``: (index, flag, inline value or None, option,
    positive, tokens it takes). Unknown words are stepped over one at a time."""
    i = start
    while i < len(argv):
        flag, inline = _split_eq(argv[i])
        found = _lookup(flag)
        if found is None:
            i += 1
            continue
        opt, positive = found
        n = 1 if inline is not None else 1 + opt.n_values
        yield i, flag, inline, opt, positive, n
        i += n


def _occurrences(argv: list[str], start: int, opt: _Option) -> list[tuple[int, int, bool, bool]]:
    """(index, token count, positive, inline) for each use of ``opt`` in argv."""
    return [(i, n, positive, inline is not None)
            for i, _, inline, this, positive, n in _walk(argv, start) if this is opt]


def _apply_change(argv: list[str], start: int, name: str, value: object) -> list[str]:
    if name not in _FIELD_OPTIONS:
        raise KeyError(f"{name} has no llama-server flag")
    flag, kind = _FIELD_OPTIONS[name]
    found = _lookup(flag)
    assert found is not None
    opt = found[0]
    occ = _occurrences(argv, start, opt)

    if kind in ("void", "bool"):
        want = bool(value) if value is not None else None
        if kind == "bool" and want is None:
            tokens = []
        elif want:
            tokens = [min(opt.flags, key=len)]
        elif kind == "bool":
            tokens = [min(opt.neg, key=len)]
        else:
            tokens = []
        if occ:
            first = occ[0]
            if tokens and first[2] == bool(want) and not first[3]:
                tokens = [argv[first[0]]]  # keep the user's spelling
            argv = argv[: first[0]] + tokens + argv[first[0] + first[1] :]
            return _drop(argv, start, opt, keep_first=bool(tokens))
        return argv + tokens

    text = _format_value(name, value)
    if text is None:
        return _drop(argv, start, opt, keep_first=False)
    if occ:
        # replace the last occurrence in place (it is the one that wins), drop the others
        idx, n, _pos, inline = occ[-1]
        if inline:
            argv = argv[:idx] + [argv[idx].split("=", 1)[0] + "=" + text] + argv[idx + n :]
        else:
            argv = argv[: idx + 1] + [text] + argv[idx + 2 :]
        for idx, n, _pos, _inline in reversed(occ[:-1]):
            argv = argv[:idx] + argv[idx + n :]
        return argv
    return argv + [opt.short, text]


def _drop(argv: list[str], start: int, opt: _Option, *, keep_first: bool) -> list[str]:
    occ = _occurrences(argv, start, opt)
    if keep_first:
        occ = occ[1:]
    for idx, n, _pos, _inline in reversed(occ):
        argv = argv[:idx] + argv[idx + n :]
    return argv


def _mask_secrets(argv: list[str], start: int) -> list[str]:
    out = list(argv)
    for i, flag, inline, opt, _, _ in _walk(argv, start):
        placeholder = next((p for f, p in _SECRET_FLAGS.items() if f in opt.flags), None)
        if placeholder is None:
            continue
        if inline is not None:
            out[i] = f"{flag}={placeholder}"
        elif i + 1 < len(out):
            out[i + 1] = placeholder
    return out
