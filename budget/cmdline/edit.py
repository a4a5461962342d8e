"""Editing the user's own llama-server command line, masking its secrets, and quoting it."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, SupportsInt, cast

from kvwall.budget.cmdline.options import (
    FIELD_OPTIONS,
    Option,
    SwitchKind,
    field_option,
    first_option_index,
    is_switch,
    lookup,
    split_eq,
)

# Placeholders written instead of secrets when a command line is rendered.
API_KEY_PLACEHOLDER = "$LLAMA_API_KEY"
HF_TOKEN_PLACEHOLDER = "$HF_TOKEN"

_SECRET_FLAGS = {"--api-key": API_KEY_PLACEHOLDER, "--hf-token": HF_TOKEN_PLACEHOLDER}


def secret_placeholder(opt: Option) -> str | None:
    """The placeholder shown instead of this option's value, if the value is a secret."""
    return next((p for f, p in _SECRET_FLAGS.items() if f in opt.flags), None)


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


def edited_command_line(argv: Sequence[str], changes: Mapping[str, object]) -> list[str]:
    """``argv`` edited to apply ``changes`` (ServerConfig field -> value), secrets masked.

    Existing flags are replaced in place (whatever spelling the user used); missing ones
    are appended in their short form.

    Raises:
        KeyError: a change names a field that has no llama-server flag.
    """
    edited = list(argv) or ["llama-server"]
    start = first_option_index(edited)
    for name, value in changes.items():
        edited = _apply_change(edited, start, name, value)
    return _mask_secrets(edited, start)


def masked_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values of secret flags replaced by their placeholders."""
    return _mask_secrets(list(argv), first_option_index(argv))


class _Use(NamedTuple):
    """One known option on a command line."""

    at: int  # its index in argv
    flag: str  # as written, without any ``=value``
    inline: str | None  # the value of ``--x=value``
    option: Option
    positive: bool
    n_tokens: int  # argv items it spans, itself included


def _walk(argv: list[str], start: int) -> Iterator[_Use]:
    """Each known option in ``argv[start:]``; unknown words are stepped over one at a time."""
    i = start
    while i < len(argv):
        flag, inline = split_eq(argv[i])
        found = lookup(flag)
        if found is None:
            i += 1
            continue
        n = 1 if inline is not None else 1 + found.option.n_values
        yield _Use(i, flag, inline, found.option, found.positive, n)
        i += n


def _uses(argv: list[str], start: int, opt: Option) -> list[_Use]:
    return [use for use in _walk(argv, start) if use.option is opt]


def _format_value(name: str, value: object) -> str | None:
    """The flag value text for a field value; None = the flag must be absent."""
    if value is None:
        return None
    # callers pass the field's own type (ServerConfig's annotation); casts only name it
    if name == "n_gpu_layers":
        n = int(cast("SupportsInt | str", value))
        return {-1: "auto", -2: "all"}.get(n, str(value))
    if name == "fit":
        return "on" if value else "off"
    if name == "fit_target_mib":
        return ",".join(str(v) for v in cast("Iterable[object]", value))
    if name == "tensor_split":
        return ",".join(f"{v:g}" for v in cast("Iterable[float]", value))
    if name == "override_tensor":
        return ",".join(cast("Iterable[str]", value)) if value else None
    return str(value)


def _apply_change(argv: list[str], start: int, name: str, value: object) -> list[str]:
    spec = FIELD_OPTIONS.get(name)
    opt = field_option(name)
    if spec is None or opt is None:
        raise KeyError(f"{name} has no llama-server flag")
    if is_switch(spec.kind):
        return _apply_switch(argv, start, opt, spec.kind, value)
    uses = _uses(argv, start, opt)
    text = _format_value(name, value)
    if text is None:
        return _drop(argv, start, opt, keep_first=False)
    if not uses:
        return [*argv, opt.short, text]
    # replace the last use in place (it is the one that wins), drop the others
    last = uses[-1]
    if last.inline is not None:
        argv = [*argv[:last.at], f"{last.flag}={text}", *argv[last.at + last.n_tokens:]]
    else:
        argv = [*argv[:last.at + 1], text, *argv[last.at + 2:]]
    for use in reversed(uses[:-1]):
        argv = argv[: use.at] + argv[use.at + use.n_tokens :]
    return argv


def _apply_switch(
    argv: list[str], start: int, opt: Option, kind: SwitchKind, value: object
) -> list[str]:
    """Set a flag-only option: write its flag, its negative flag, or neither."""
    want = bool(value) if value is not None else None
    if kind == "bool" and want is None:
        tokens = []
    elif want:
        tokens = [opt.short]
    elif kind == "bool":
        tokens = [min(opt.negative_flags, key=len)]
    else:
        tokens = []
    uses = _uses(argv, start, opt)
    if not uses:
        return argv + tokens
    first = uses[0]
    if tokens and first.positive == bool(want) and first.inline is None:
        tokens = [argv[first.at]]  # keep the user's spelling
    argv = argv[: first.at] + tokens + argv[first.at + first.n_tokens :]
    return _drop(argv, start, opt, keep_first=bool(tokens))


def _drop(argv: list[str], start: int, opt: Option, *, keep_first: bool) -> list[str]:
    uses = _uses(argv, start, opt)
    if keep_first:
        uses = uses[1:]
    for use in reversed(uses):
        argv = argv[: use.at] + argv[use.at + use.n_tokens :]
    return argv


def _mask_secrets(argv: list[str], start: int) -> list[str]:
    out = list(argv)
    for use in _walk(argv, start):
        placeholder = secret_placeholder(use.option)
        if placeholder is None:
            continue
        if use.inline is not None:
            out[use.at] = f"{use.flag}={placeholder}"
        elif use.at + 1 < len(out):
            out[use.at + 1] = placeholder
    return out
