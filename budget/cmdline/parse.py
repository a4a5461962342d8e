"""Parsing a llama-server command line and its LLAMA_ARG_* environment as llama-server does."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kvwall.budget.cachetypes import CACHE_TYPES
from kvwall.budget.cmdline.edit import secret_placeholder
from kvwall.budget.cmdline.options import (
    FIELD_OPTIONS,
    ConvertedKind,
    Option,
    env_options,
    first_option_index,
    lookup,
    split_eq,
)
from kvwall.budget.config import ConfigError, ServerConfig

LLAMA_MAX_DEVICES = 16  # llama_max_devices(): -ts takes fewer values than this
_SPLIT_MODES = ("none", "layer", "row", "tensor")

# common_arg_utils::is_truthy / is_falsey / is_autoy
_TRUTHY = ("on", "enabled", "true", "1")
_FALSEY = ("off", "disabled", "false", "0")
_AUTOY = ("auto", "-1")

FieldValue = str | int | bool | tuple[str, ...] | tuple[int, ...] | tuple[float, ...] | None
"""The value of a ServerConfig field that an option sets."""

_DEFAULTS = ServerConfig()


@dataclass
class _Parse:
    """What one ``parse_command_line`` call has read so far (one per call, never shared)."""

    values: dict[str, FieldValue] = field(default_factory=dict)  # field -> value
    explicit: set[str] = field(default_factory=set)  # Option.name of each option set
    applied_env: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def previous(self, name: str) -> FieldValue:
        """The field's value so far (its default before any flag or variable set it)."""
        if name in self.values:
            return self.values[name]
        value: FieldValue = getattr(_DEFAULTS, name)
        return value


@dataclass(frozen=True)
class _Raw:
    """One value to convert for a field, and where it came from."""

    field: str  # the ServerConfig field
    text: str
    source: str  # the flag or environment variable, as messages name it
    previous: FieldValue  # the field's value so far (-ot patterns accumulate)


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
    args = [str(a) for a in argv]
    state = _Parse()
    _read_env(state, env or {})
    _read_argv(state, args)
    # each value has its field's type: the converters below make it so (mypy cannot
    # relate field names given as strings to the dataclass's annotations)
    return ServerConfig(
        argv=tuple(args),
        env=state.applied_env,
        explicit=frozenset(state.explicit),
        unknown_flags=tuple(state.unknown),
        notes=tuple(dict.fromkeys(state.notes)),
        **state.values,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------
# the two sources, environment first


def _read_env(state: _Parse, env: Mapping[str, str]) -> None:
    """Apply the ``LLAMA_ARG_*`` variables of the fields kvwall models."""
    for env_name, opt in env_options().items():
        raw: str | None = None
        if opt.negative_flags and env_name.startswith("LLAMA_ARG_"):
            neg_env = env_name.replace("LLAMA_ARG_", "LLAMA_ARG_NO_", 1)
            if neg_env in env:
                raw = "0"
                state.applied_env[neg_env] = env[neg_env]
        if raw is None and env_name in env:
            raw = env[env_name]
            state.applied_env[env_name] = raw
        if raw is not None:
            _set_from_env(state, opt, env_name, raw)


def _set_from_env(state: _Parse, opt: Option, env_name: str, raw: str) -> None:
    name = opt.field
    assert name is not None, env_name
    kind = FIELD_OPTIONS[name].kind
    if kind == "void":
        # a switch's variable only turns it on
        if raw in _TRUTHY:
            state.values[name] = True
            state.explicit.add(opt.name)
        return
    if kind == "bool":
        state.values[name] = _parse_bool(raw, env_name)
    else:
        try:
            raw_value = _Raw(name, raw, env_name, state.previous(name))
            state.values[name] = _convert(kind, raw_value, state.notes)
        except ConfigError as exc:
            raise ConfigError(f"environment variable {exc}") from None
    state.explicit.add(opt.name)


def _read_argv(state: _Parse, argv: list[str]) -> None:
    """Apply the command line; unknown words and other tools' flags go to ``unknown``."""
    i = first_option_index(argv)
    while i < len(argv):
        arg = argv[i]
        flag, inline = split_eq(arg)
        found = lookup(flag)
        if found is None:
            state.unknown.append(arg)
            i += 1
            continue
        opt = found.option
        if inline is not None:
            shown = secret_placeholder(opt) or inline
            state.notes.append(
                f"{flag}={shown}: read as {flag} {shown}; llama-server itself wants the value "
                "as a separate argument"
            )
            values = [inline]
            i += 1
        else:
            values = argv[i + 1 : i + 1 + opt.n_values]
            if len(values) < opt.n_values:
                raise ConfigError(f"{flag}: expected a value")
            i += 1 + opt.n_values
        if not opt.server:
            state.unknown.append(arg)
        elif opt.field is not None:
            _set_from_flag(state, opt, flag, found.positive, inline, values)


def _set_from_flag(
    state: _Parse, opt: Option, flag: str, positive: bool, inline: str | None, values: list[str]
) -> None:
    name = opt.field
    assert name is not None, flag
    kind = FIELD_OPTIONS[name].kind
    if kind == "void":
        state.values[name] = True
    elif kind == "bool":
        # --x=off is a kvwall convenience; llama-server's own switches take no value
        on = _parse_bool(inline, flag) if inline is not None else True
        state.values[name] = on == positive
    else:
        raw = _Raw(name, values[0], flag, state.previous(name))
        state.values[name] = _convert(kind, raw, state.notes)
    state.explicit.add(opt.name)


# ---------------------------------------------------------------------------
# value conversion, as llama-server's handlers do it


def _parse_bool(value: str, source: str) -> bool:
    if value in _TRUTHY:
        return True
    if value in _FALSEY:
        return False
    raise ConfigError(f"{source}: invalid boolean value {value!r} (on/off, true/false, 1/0)")


TRAILING_TEXT_NOTE = "it ignores what follows the number"
"""Part of the note for a number with trailing text (``-c 8k`` reads 8): ``kvwall plan``
finds these notes by it and says them first, as warnings."""


def _stoi(value: str, source: str, notes: list[str], *, unsigned_ll: bool = False) -> int:
    """C++ ``std::stoi``: leading blanks, sign, digits; trailing text ignored (with a note)."""
    m = re.match(r"\s*([+-]?\d+)", value)
    if not m:
        raise ConfigError(f"{source}: invalid value {value!r} (expected a whole number)")
    n = int(m.group(1))
    if m.end() != len(value):
        notes.append(f"{source} {value}: llama-server reads this as {n} ({TRAILING_TEXT_NOTE})")
    limit = 2**64 if unsigned_ll else 2**31
    if not (-limit <= n < limit):
        raise ConfigError(f"{source}: value {value!r} is out of range")
    return n


def _to_int(raw: _Raw, notes: list[str]) -> int:
    n = _stoi(raw.text, raw.source, notes)
    flag, value = raw.source, raw.text
    if raw.field == "n_parallel" and n == 0:
        raise ConfigError(f"{flag}: invalid value for n_parallel: {value!r} (0 is not allowed)")
    if raw.field == "n_cpu_moe" and n < 0:
        raise ConfigError(f"{flag}: invalid value {value!r} (must not be negative)")
    if raw.field == "sleep_idle_seconds" and (n == 0 or n < -1):
        raise ConfigError(f"{flag}: invalid value {value!r}: cannot be 0 or less than -1")
    return n


def _to_str(raw: _Raw, notes: list[str]) -> str:
    if raw.field == "split_mode" and raw.text not in _SPLIT_MODES:
        raise ConfigError(f"{raw.source}: invalid value {raw.text!r} ({', '.join(_SPLIT_MODES)})")
    return raw.text


def _to_cache_type(raw: _Raw, notes: list[str]) -> str:
    if raw.text not in CACHE_TYPES:
        raise ConfigError(
            f"{raw.source}: Unsupported cache type: {raw.text} (allowed: {', '.join(CACHE_TYPES)})"
        )
    return raw.text


def _to_flash_attn(raw: _Raw, notes: list[str]) -> str:
    if raw.text in _TRUTHY:
        return "on"
    if raw.text in _FALSEY:
        return "off"
    if raw.text in _AUTOY:
        return "auto"
    raise ConfigError(
        f"{raw.source}: unknown value for --flash-attn: {raw.text!r} (on, off or auto)"
    )


def _to_on_off(raw: _Raw, notes: list[str]) -> bool:
    if raw.text in _TRUTHY:
        return True
    if raw.text in _FALSEY:
        return False
    raise ConfigError(f"{raw.source}: unknown value for {raw.source}: {raw.text!r} (on or off)")


def _to_gpu_layers(raw: _Raw, notes: list[str]) -> int | None:
    """None = auto (``auto`` or -1), -2 = ``all``."""
    if raw.text == "auto":
        return None
    if raw.text == "all":
        return -2
    n = _stoi(raw.text, raw.source, notes)
    return None if n == -1 else n


def _to_override_tensor(raw: _Raw, notes: list[str]) -> tuple[str, ...]:
    """The patterns so far plus this value's (``-ot`` may be given several times)."""
    for part in raw.text.split(","):
        if "=" not in part:
            raise ConfigError(
                f"{raw.source}: invalid value {raw.text!r} (expected pattern=buffer_type)"
            )
    previous = raw.previous
    assert isinstance(previous, tuple)
    return tuple(str(p) for p in previous) + tuple(raw.text.split(","))


def _device_list(raw: _Raw, parts: list[str]) -> list[str]:
    """``parts`` if fewer than llama.cpp's device limit."""
    if len(parts) >= LLAMA_MAX_DEVICES:
        raise ConfigError(
            f"{raw.source}: got {len(parts)} input configs, but system only has "
            f"{LLAMA_MAX_DEVICES} devices"
        )
    return parts


def _to_fit_target(raw: _Raw, notes: list[str]) -> tuple[int, ...]:
    parts = _device_list(raw, re.split(r"[,/]+", raw.text))
    return tuple(_stoi(p, raw.source, notes, unsigned_ll=True) for p in parts)


def _to_tensor_split(raw: _Raw, notes: list[str]) -> tuple[float, ...]:
    parts = _device_list(raw, [p for p in re.split(r"[,/]+", raw.text) if p])
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"{raw.source}: invalid value {raw.text!r} (expected numbers like 3,1)"
        ) from None


_CONVERTERS: dict[ConvertedKind, Callable[[_Raw, list[str]], FieldValue]] = {
    "int": _to_int,
    "str": _to_str,
    "cache_type": _to_cache_type,
    "flash_attn": _to_flash_attn,
    "on_off": _to_on_off,
    "gpu_layers": _to_gpu_layers,
    "override_tensor": _to_override_tensor,
    "fit_target": _to_fit_target,
    "tensor_split": _to_tensor_split,
}


def _convert(kind: ConvertedKind, raw: _Raw, notes: list[str]) -> FieldValue:
    """The field value llama-server's handler makes of ``raw``; remarks go to ``notes``."""
    return _CONVERTERS[kind](raw, notes)
