"""The option index kvwall builds from the generated table (``budget/cmdline/options.py``)."""

from __future__ import annotations

import dataclasses
import typing

from kvwall.budget.cmdline.options import (
    FIELD_OPTIONS,
    ValueKind,
    env_options,
    field_option,
    first_option_index,
    lookup,
    option_index,
    split_eq,
)
from kvwall.budget.config import ServerConfig
from kvwall.budget.llama_args import LLAMA_CPP_BUILD, OPTIONS, OptionKind


def _literal_values(alias: object) -> set[str]:
    """Every string of a (possibly nested) ``Literal`` alias."""
    out: set[str] = set()
    for arg in typing.get_args(alias):
        out |= _literal_values(arg) if typing.get_args(arg) else {arg}
    return out


def test_every_table_row_names_its_kind_and_build():
    assert {o.kind for o in OPTIONS} <= _literal_values(OptionKind)
    assert LLAMA_CPP_BUILD.startswith("b")


def test_every_modelled_field_is_a_server_option_that_sets_that_field():
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    for name, spec in FIELD_OPTIONS.items():
        assert name in fields
        assert spec.kind in _literal_values(ValueKind)
        opt = field_option(name)
        assert opt is not None and opt.server and opt.field == name
        assert spec.flag in opt.flags


def test_spellings_lookups_and_environment_variables():
    ctx = lookup("-c")
    same = lookup("--ctx_size")
    assert ctx is not None and same is not None and ctx.option is same.option
    assert ctx.positive and ctx.option.name == "ctx-size" and ctx.option.short == "-c"
    off = lookup("--no-kv-unified")
    assert off is not None and not off.positive and off.option.field == "kv_unified"
    assert lookup("--frobnicate") is None
    assert env_options()["LLAMA_ARG_CTX_SIZE"] is ctx.option
    assert all(match.option.flags for match in option_index().values())


def test_inline_values_and_where_options_start():
    assert split_eq("--ctx-size=4096") == ("--ctx-size", "4096")
    assert split_eq("--frobnicate=1") == ("--frobnicate=1", None)
    assert first_option_index(["llama-server", "-m", "m"]) == 1
    assert first_option_index(["/opt/bin/llama", "serve", "-m", "m"]) == 2
    assert first_option_index(["llama", "-m", "m"]) == 1
