"""llama-server's options as kvwall looks them up: spellings, the config fields they set."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple, TypeGuard

from kvwall.budget.llama_args import OPTIONS, LlamaOption, OptionKind

SwitchKind = Literal["void", "bool"]
"""A field set by the flag alone: void (present = on), bool (its negative flag = off)."""

ConvertedKind = Literal[
    "int",
    "str",
    "cache_type",
    "flash_attn",
    "on_off",
    "gpu_layers",
    "override_tensor",
    "fit_target",
    "tensor_split",
]
"""A field read from the flag's value, each kind the way llama-server's handler reads it."""

ValueKind = Literal[SwitchKind, ConvertedKind]
"""How a ServerConfig field is read from its option (and written back when editing)."""


def is_switch(kind: ValueKind) -> TypeGuard[SwitchKind]:
    """Whether a field of this kind is set by its flag alone (no value follows it)."""
    return kind in ("void", "bool")


@dataclass(frozen=True)
class FieldOption:
    """The option that sets one ServerConfig field.

    Attributes:
        flag: a spelling that identifies the option in the table.
        kind: how the field's value is read from (and written to) the command line.
    """

    flag: str
    kind: ValueKind


# ServerConfig field -> the option that sets it
FIELD_OPTIONS: dict[str, FieldOption] = {
    "model_path": FieldOption("--model", "str"),
    "n_ctx": FieldOption("--ctx-size", "int"),
    "n_parallel": FieldOption("--parallel", "int"),
    "kv_unified": FieldOption("--kv-unified", "bool"),
    "kv_unified_per_slot": FieldOption("--kv-unified-per-slot", "int"),
    "cache_type_k": FieldOption("--cache-type-k", "cache_type"),
    "cache_type_v": FieldOption("--cache-type-v", "cache_type"),
    "flash_attn": FieldOption("--flash-attn", "flash_attn"),
    "n_gpu_layers": FieldOption("--gpu-layers", "gpu_layers"),
    "swa_full": FieldOption("--swa-full", "void"),
    "n_batch": FieldOption("--batch-size", "int"),
    "n_ubatch": FieldOption("--ubatch-size", "int"),
    "kv_offload": FieldOption("--kv-offload", "bool"),
    "cpu_moe": FieldOption("--cpu-moe", "void"),
    "n_cpu_moe": FieldOption("--n-cpu-moe", "int"),
    "override_tensor": FieldOption("--override-tensor", "override_tensor"),
    "fit": FieldOption("--fit", "on_off"),
    "fit_target_mib": FieldOption("--fit-target", "fit_target"),
    "fit_ctx": FieldOption("--fit-ctx", "int"),
    "cache_ram_mib": FieldOption("--cache-ram", "int"),
    "ctx_checkpoints": FieldOption("--ctx-checkpoints", "int"),
    "host": FieldOption("--host", "str"),
    "port": FieldOption("--port", "int"),
    "api_prefix": FieldOption("--api-prefix", "str"),
    "api_key": FieldOption("--api-key", "str"),
    "api_key_file": FieldOption("--api-key-file", "str"),
    "alias": FieldOption("--alias", "str"),
    "endpoint_slots": FieldOption("--slots", "bool"),
    "endpoint_metrics": FieldOption("--metrics", "void"),
    "sleep_idle_seconds": FieldOption("--sleep-idle-seconds", "int"),
    "draft_model": FieldOption("--spec-draft-model", "str"),
    "spec_type": FieldOption("--spec-type", "str"),
    "mmproj": FieldOption("--mmproj", "str"),
    "spec_draft_n_max": FieldOption("--spec-draft-n-max", "int"),
    "embedding": FieldOption("--embedding", "void"),
    "split_mode": FieldOption("--split-mode", "str"),
    "tensor_split": FieldOption("--tensor-split", "tensor_split"),
    "main_gpu": FieldOption("--main-gpu", "int"),
    "device": FieldOption("--device", "str"),
    "load_mode": FieldOption("--load-mode", "str"),
}

_N_VALUES: dict[OptionKind, int] = {"void": 0, "bool": 0, "int": 1, "str": 1, "str2": 2}


@dataclass(frozen=True, eq=False)
class Option:
    """One row of the option table, with what parsing and editing need precomputed.

    Compared by identity: each option exists once, in the index.

    Attributes:
        flags, negative_flags, kind, env, server: the table row (``LlamaOption``).
        long: the first ``--`` spelling (else the first one).
        short: the shortest spelling, written when a flag is added.
        name: ``long`` without dashes, as ``ServerConfig.explicit`` holds it.
        n_values: how many arguments follow the flag.
        field: the ServerConfig field it sets, if kvwall models it.
    """

    flags: tuple[str, ...]
    negative_flags: tuple[str, ...]
    kind: OptionKind
    env: str | None
    server: bool
    long: str
    short: str
    name: str
    n_values: int
    field: str | None

    @classmethod
    def from_row(cls, row: LlamaOption, field: str | None) -> Option:
        long = next((f for f in row.flags if f.startswith("--")), row.flags[0])
        return cls(
            flags=row.flags,
            negative_flags=row.negative_flags,
            kind=row.kind,
            env=row.env,
            server=row.server,
            long=long,
            short=min(row.flags, key=len),
            name=long.lstrip("-"),
            n_values=_N_VALUES[row.kind],
            field=field,
        )


class FlagMatch(NamedTuple):
    """What a spelling on the command line names."""

    option: Option
    positive: bool  # False for a negative spelling (``--no-...``)


def _row_index() -> dict[str, tuple[LlamaOption, bool]]:
    """spelling -> (row, is_positive); llama-server's options win over other tools'."""
    index: dict[str, tuple[LlamaOption, bool]] = {}
    for row in OPTIONS:
        spellings = [(f, True) for f in row.flags] + [(f, False) for f in row.negative_flags]
        for spelling, positive in spellings:
            if spelling in index and index[spelling][0].server and not row.server:
                continue
            index[spelling] = (row, positive)
    return index


@lru_cache(maxsize=1)
def option_index() -> dict[str, FlagMatch]:
    """Every spelling of every option -> what it names (built once)."""
    rows = _row_index()
    field_of_row = {id(rows[spec.flag][0]): name for name, spec in FIELD_OPTIONS.items()}
    options = {id(row): Option.from_row(row, field_of_row.get(id(row))) for row in OPTIONS}
    return {
        spelling: FlagMatch(options[id(row)], positive)
        for spelling, (row, positive) in rows.items()
    }


def lookup(flag: str) -> FlagMatch | None:
    """The option a flag names (``--some_flag`` underscore spellings included), or None."""
    if flag.startswith("--"):
        flag = flag.replace("_", "-")
    return option_index().get(flag)


def field_option(name: str) -> Option | None:
    """The option that sets the ServerConfig field ``name``; None if it has no flag."""
    spec = FIELD_OPTIONS.get(name)
    if spec is None:
        return None
    found = lookup(spec.flag)
    assert found is not None, spec.flag
    return found.option


@lru_cache(maxsize=1)
def env_options() -> dict[str, Option]:
    """Environment variable -> option, for the options that set a ServerConfig field."""
    out: dict[str, Option] = {}
    for name in FIELD_OPTIONS:
        opt = field_option(name)
        if opt is not None and opt.env:
            out[opt.env] = opt
    return out


def split_eq(arg: str) -> tuple[str, str | None]:
    """``--x=y`` -> (``--x``, ``y``) when ``--x`` is an option; anything else -> (arg, None)."""
    if arg.startswith("-") and "=" in arg:
        flag, value = arg.split("=", 1)
        if lookup(flag) is not None:
            return flag, value
    return arg, None


def first_option_index(argv: Sequence[str]) -> int:
    """Where options start: 1 for ``llama-server``, 2 for ``llama serve``/``llama server``."""
    unified = len(argv) >= 2 and _basename(argv[0]) in ("llama", "llama.exe")
    return 2 if unified and argv[1] in ("serve", "server") else 1


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path)[-1]
