"""llama-server command lines: parsing as llama-server does, and editing the user's own argv."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvwall.budget.cachetypes import CACHE_TYPES
from kvwall.budget.cmdline.edit import API_KEY_PLACEHOLDER, render_command
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.config import ConfigError, ServerConfig


def parse(cmd: str, env: dict | None = None) -> ServerConfig:
    return parse_command_line(shlex.split(cmd), env)


# ---------------------------------------------------------------- spellings


@pytest.mark.parametrize(
    "cmd",
    [
        "llama-server -m m.gguf -c 8192 -np 2 -ctk q8_0 -ctv q4_0 -fa on -ub 256",
        "llama-server --model m.gguf --ctx-size 8192 --parallel 2 --cache-type-k q8_0 "
        "--cache-type-v q4_0 --flash-attn on --ubatch-size 256",
        "llama-server --model=m.gguf --ctx-size=8192 --parallel=2 --cache-type-k=q8_0 "
        "--cache-type-v=q4_0 --flash-attn=on --ubatch-size=256",
        "llama-server --model m.gguf --ctx_size 8192 --parallel 2 --cache_type_k q8_0 "
        "--cache_type_v q4_0 --flash_attn on --ubatch_size 256",
        "/opt/llama/bin/llama serve -m m.gguf -c 8192 -np 2 -ctk q8_0 -ctv q4_0 -fa 1 -ub 256",
        "llama server -m m.gguf -c 8192 -np 2 -ctk q8_0 -ctv q4_0 -fa enabled -ub 256",
    ],
)
def test_every_spelling_gives_the_same_configuration(cmd):
    c = parse(cmd)
    assert (c.model_path, c.n_ctx, c.n_parallel) == ("m.gguf", 8192, 2)
    assert (c.cache_type_k, c.cache_type_v, c.flash_attn, c.n_ubatch) == ("q8_0", "q4_0", "on", 256)
    assert {"ctx-size", "parallel", "cache-type-k", "cache-type-v", "flash-attn"} <= c.explicit


def test_defaults_are_llama_servers():
    c = parse("llama-server -m m.gguf")
    assert c.n_ctx is None and c.n_parallel == -1 and c.kv_unified is None
    assert (c.cache_type_k, c.cache_type_v, c.flash_attn) == ("f16", "f16", "auto")
    assert (c.n_batch, c.n_ubatch, c.fit, c.fit_ctx, c.cache_ram_mib) == (2048, 512, True, 4096, 8192)
    assert c.explicit == {"model"}


def test_boolean_flags_and_negations():
    c = parse("llama-server -m m -kvu --swa-full -nkvo -cmoe --no-slots --metrics -fit off")
    assert c.kv_unified is True and c.swa_full and not c.kv_offload and c.cpu_moe
    assert not c.endpoint_slots and c.endpoint_metrics and not c.fit
    c = parse("llama-server -m m --kv-unified --no-kv-unified")
    assert c.kv_unified is False  # the last one wins


def test_gpu_layers_words_and_numbers():
    assert parse("llama-server -ngl auto").n_gpu_layers is None
    assert parse("llama-server -ngl -1").n_gpu_layers is None
    assert parse("llama-server -ngl all").n_gpu_layers == -2
    assert parse("llama-server --n-gpu-layers 20").n_gpu_layers == 20


def test_values_of_unmodelled_flags_are_not_mistaken_for_flags():
    c = parse("llama-server --temp 0.7 -m m.gguf --chat-template chatml -c 4096 --jinja")
    assert c.model_path == "m.gguf" and c.n_ctx == 4096
    assert c.unknown_flags == ()


def test_unknown_and_other_tool_flags_are_kept_and_reported():
    c = parse("llama-server -m m.gguf --frobnicate -c 4096 --interactive")
    assert c.n_ctx == 4096
    assert c.unknown_flags == ("--frobnicate", "--interactive")
    assert "--frobnicate" in c.argv


def test_numbers_are_read_like_std_stoi_with_a_note():
    c = parse("llama-server -c 8k")
    assert c.n_ctx == 8
    assert any("-c 8k" in n and "8" in n for n in c.notes)


def test_override_patterns_accumulate():
    c = parse("llama-server -ot 'blk\\.1\\.=CPU' --override-tensor exps=CPU,attn=CUDA0")
    assert c.override_tensor == ("blk\\.1\\.=CPU", "exps=CPU", "attn=CUDA0")


def test_fit_targets_split_on_commas_and_slashes():
    assert parse("llama-server -fitt 512,2048/256").fit_target_mib == (512, 2048, 256)


# ---------------------------------------------------------------- environment


def test_environment_applies_first_and_the_command_line_overrides_it():
    env = {
        "LLAMA_ARG_CTX_SIZE": "32768",
        "LLAMA_ARG_N_PARALLEL": "3",
        "LLAMA_ARG_CACHE_TYPE_K": "q8_0",
        "LLAMA_ARG_FLASH_ATTN": "off",
        "LLAMA_ARG_SWA_FULL": "1",
        "HOME": "/root",
    }
    c = parse("llama-server -m m.gguf -np 2", env)
    assert c.n_ctx == 32768 and c.n_parallel == 2 and c.cache_type_k == "q8_0"
    assert c.flash_attn == "off" and c.swa_full
    assert "ctx-size" in c.explicit and "swa-full" in c.explicit
    assert "HOME" not in c.env and c.env["LLAMA_ARG_CTX_SIZE"] == "32768"


def test_environment_negative_variable_turns_a_switch_off():
    c = parse("llama-server -m m", {"LLAMA_ARG_NO_KV_OFFLOAD": "1"})
    assert c.kv_offload is False
    c = parse("llama-server -m m", {"LLAMA_ARG_KV_UNIFIED": "true"})
    assert c.kv_unified is True


def test_api_key_given_as_flag_is_not_repeated_in_notes_or_repr():
    c = parse("llama-server -m m --api-key=s3cret-key")
    assert c.api_key == "s3cret-key"
    assert "s3cret-key" not in repr(c) and not any("s3cret-key" in n for n in c.notes)


def test_api_key_from_environment_is_kept_but_never_shown():
    c = parse("llama-server -m m", {"LLAMA_API_KEY": "s3cret-key"})
    assert c.api_key == "s3cret-key"
    assert "s3cret-key" not in repr(c)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("cmd", "env", "words"),
    [
        ("llama-server -ctk q3_k", None, ["-ctk", "Unsupported cache type", "q3_k"]),
        ("llama-server --cache-type-v=f8", None, ["--cache-type-v", "f8"]),
        ("llama-server -np 0", None, ["-np", "n_parallel", "0"]),
        ("llama-server -c lots", None, ["-c", "lots"]),
        ("llama-server -fa maybe", None, ["-fa", "maybe"]),
        ("llama-server --fit sometimes", None, ["--fit", "sometimes"]),
        ("llama-server -c", None, ["-c", "value"]),
        ("llama-server -ncmoe -2", None, ["-ncmoe", "-2"]),
        ("llama-server --sleep-idle-seconds 0", None, ["--sleep-idle-seconds", "0"]),
        ("llama-server -ot exps", None, ["-ot", "exps"]),
        ("llama-server -sm rows", None, ["-sm", "rows"]),
        ("llama-server", {"LLAMA_ARG_SPLIT_MODE": "bogus"}, ["LLAMA_ARG_SPLIT_MODE", "bogus"]),
        ("llama-server -ts " + ",".join(["1"] * 16), None, ["-ts", "16", "devices"]),
        ("llama-server", {"LLAMA_ARG_CACHE_TYPE_K": "q2"}, ["LLAMA_ARG_CACHE_TYPE_K", "q2"]),
        ("llama-server", {"LLAMA_ARG_KV_UNIFIED": "perhaps"}, ["LLAMA_ARG_KV_UNIFIED", "perhaps"]),
    ],
)
def test_values_llama_server_rejects_raise_one_line_naming_flag_and_value(cmd, env, words):
    with pytest.raises(ConfigError) as err:
        parse(cmd, env)
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_every_allowed_cache_type_parses():
    for t in CACHE_TYPES:
        assert parse(f"llama-server -ctk {t} -ctv {t}").cache_type_v == t


# ---------------------------------------------------------------- editing


def test_command_line_edits_in_place_and_keeps_the_users_spelling():
    c = parse("llama-server --model m.gguf --ctx-size=4096 --cache_type_k f16 -fa off --port 9000")
    out = c.command_line(n_ctx=8192, cache_type_k="q8_0", cache_type_v="q8_0", flash_attn="on")
    assert out == [
        "llama-server", "--model", "m.gguf", "--ctx-size=8192", "--cache_type_k", "q8_0",
        "-fa", "on", "--port", "9000", "-ctv", "q8_0",
    ]  # fmt: skip


def test_command_line_for_the_unified_binary_and_repeated_flags():
    c = parse("llama serve -m m.gguf -c 1024 -c 2048")
    out = c.command_line(n_ctx=4096)
    assert out == ["llama", "serve", "-m", "m.gguf", "-c", "4096"]


def test_command_line_switches_and_removals():
    c = parse("llama-server -m m.gguf -no-kvu --swa-full -c 4096")
    assert c.command_line(kv_unified=True, swa_full=False, n_ctx=None) == [
        "llama-server", "-m", "m.gguf", "-kvu",
    ]  # fmt: skip
    assert c.command_line(n_gpu_layers=-2, n_parallel=2)[-4:] == ["-ngl", "all", "-np", "2"]


def test_command_line_never_contains_the_api_key():
    c = parse("llama-server -m m.gguf --api-key s3cret --port 8081")
    out = c.command_line(n_ctx=4096)
    assert "s3cret" not in " ".join(out) and API_KEY_PLACEHOLDER in out
    c = parse("llama-server -m m.gguf --api-key=s3cret -hft hf_tok")
    line = render_command(c.command_line())
    assert "s3cret" not in line and "hf_tok" not in line
    # the placeholders stay expandable by the shell (double quotes, not single)
    assert '--api-key="$LLAMA_API_KEY"' in line and '-hft "$HF_TOKEN"' in line


def test_rendered_command_quotes_for_the_shell_and_round_trips():
    c = parse("llama-server -m '/models/my model.gguf' -c 4096 --api-key k")
    line = render_command(c.command_line(n_parallel=2))
    assert "'/models/my model.gguf'" in line and '"$LLAMA_API_KEY"' in line
    again = parse(line.replace('"$LLAMA_API_KEY"', "X"))
    assert again.model_path == "/models/my model.gguf" and again.n_parallel == 2


def test_replace_updates_explicit_but_not_argv():
    c = parse("llama-server -m m.gguf")
    d = c.replace(n_ctx=8192, cache_type_k="q8_0")
    assert d.n_ctx == 8192 and d.argv == c.argv
    assert {"ctx-size", "cache-type-k"} <= d.explicit and "ctx-size" not in c.explicit
    assert d.is_explicit("n_ctx") and not c.is_explicit("n_ctx")


_CHANGES = st.fixed_dictionaries(
    {},
    optional={
        "n_ctx": st.integers(1, 1 << 20),
        "n_parallel": st.integers(1, 64),
        "cache_type_k": st.sampled_from(CACHE_TYPES),
        "cache_type_v": st.sampled_from(CACHE_TYPES),
        "flash_attn": st.sampled_from(["on", "off", "auto"]),
        "kv_unified": st.booleans(),
        "swa_full": st.booleans(),
        "n_ubatch": st.integers(1, 4096),
        "n_gpu_layers": st.integers(0, 200),
    },
)
_BASES = st.sampled_from(
    [
        "llama-server -m m.gguf",
        "llama-server -m m.gguf -c 4096 -np 4 -ctk q8_0 --swa-full -fa=off",
        "llama serve --model m.gguf --ctx_size 100 -no-kvu -ngl 5 --temp 0.5",
        "llama-server -m m.gguf --parallel=3 --flash-attn auto -ub 64 -ub 128",
    ]
)


@settings(max_examples=150, deadline=None)
@given(_BASES, _CHANGES)
def test_edited_command_line_parses_back_to_the_changed_configuration(base, changes):
    c = parse(base)
    again = parse_command_line(c.command_line(**changes))
    for name, value in changes.items():
        assert getattr(again, name) == value, (name, value, c.command_line(**changes))
    untouched = {"model_path", "n_batch"} | ({"n_ctx"} - set(changes))
    for name in untouched:
        assert getattr(again, name) == getattr(c, name)


def test_split_mode_words_and_up_to_15_tensor_split_values_are_accepted():
    for mode in ("none", "layer", "row", "tensor"):
        assert parse(f"llama-server -sm {mode}").split_mode == mode
    assert parse("llama-server -ts " + ",".join(["1"] * 15)).tensor_split == (1.0,) * 15


def test_fit_target_takes_fewer_than_16_values():
    assert parse("llama-server -fitt " + ",".join(["1"] * 15)).fit_target_mib == (1,) * 15
    with pytest.raises(ConfigError, match="-fitt: got 16 input configs"):
        parse("llama-server -fitt " + ",".join(["1"] * 16))
