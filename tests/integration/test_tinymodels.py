"""The tiny random-weight models load in the real llama-server, complete text, and have the
memory shape of the architecture they stand for (read back from the server's own log)."""

from __future__ import annotations

import pytest
from kvwall.app.demo.tinymodels import DEFAULTS, KINDS, TinyModelError, shard_paths, write_model
from oracles.llamalog import parse_load_log

MIB = 1024 * 1024


def _mib(n_bytes: int) -> float:
    """The way llama.cpp prints MiB: two decimals."""
    return round(n_bytes / MIB, 2)


def _slot0(server) -> dict:
    slots = server.get_json("/slots")
    return next(s for s in slots if s["id"] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_kind_loads_completes_and_fills_its_slot(kind, tiny_model, llama_server):
    model = tiny_model(kind)
    assert model.stat().st_size < 5 * MIB

    server = llama_server(model, "-c", "512", "-np", "1")
    assert server.get_json("/health")["status"] == "ok"

    first = server.post_json(
        "/completion", {"prompt": "hello world", "n_predict": 8, "ignore_eos": True, "id_slot": 0}
    )
    assert first["tokens_predicted"] == 8
    after_first = _slot0(server)["n_prompt_tokens"]
    assert after_first > 0

    second = server.post_json(
        "/completion",
        {
            "prompt": "hello world, the model memory cache of the tiny llama server",
            "n_predict": 8,
            "ignore_eos": True,
            "id_slot": 0,
        },
    )
    assert second["tokens_predicted"] == 8
    assert _slot0(server)["n_prompt_tokens"] > after_first

    log = parse_load_log(server.log_text())
    assert log.errors == ()
    assert log.n_slots == 1
    assert log.model_total_mib > 0


def test_llama_kv_matches_its_gqa_shape(tiny_model, llama_server):
    p = DEFAULTS["llama"]
    model = tiny_model("llama", n_layer=3, n_head_kv=1, n_ctx_train=777)
    server = llama_server(model, "-c", "512", "-np", "1")
    log = parse_load_log(server.log_text())
    assert log.n_ctx_train == 777
    (kv,) = log.kv_caches
    head = p["n_embd"] // p["n_head"]
    assert (kv.cells, kv.layers) == (512, 3)
    # K and V: one KV head of `head` f16 values per cell and layer
    assert kv.k_mib == kv.v_mib == _mib(512 * 3 * 1 * head * 2)


def test_qwen3_kv_uses_explicit_head_size(tiny_model, llama_server):
    p = DEFAULTS["qwen3"]
    assert p["head_k"] != p["n_embd"] // p["n_head"]  # the point of this kind
    server = llama_server(tiny_model("qwen3"), "-c", "512", "-np", "1")
    (kv,) = parse_load_log(server.log_text()).kv_caches
    assert kv.k_mib == _mib(512 * p["n_layer"] * p["n_head_kv"] * p["head_k"] * 2)
    assert kv.v_mib == _mib(512 * p["n_layer"] * p["n_head_kv"] * p["head_v"] * 2)


def test_gemma3_has_a_smaller_swa_cache_than_its_full_cache(tiny_model, llama_server):
    p = DEFAULTS["gemma3"]
    server = llama_server(tiny_model("gemma3"), "-c", "1024", "-np", "1")
    log = parse_load_log(server.log_text())
    roles = {kv.role: kv for kv in log.kv_caches}
    assert set(roles) == {"non-swa", "swa"}
    n_swa_layers = sum(
        1 for il in range(p["n_layer"]) if il % p["swa_pattern"] < p["swa_pattern"] - 1
    )
    assert roles["swa"].layers == n_swa_layers
    assert roles["non-swa"].layers == p["n_layer"] - n_swa_layers
    assert roles["non-swa"].cells == 1024
    assert p["n_swa"] <= roles["swa"].cells < 1024


def test_gemma3_swa_full_gives_the_swa_layers_every_cell(tiny_model, llama_server):
    server = llama_server(tiny_model("gemma3"), "-c", "1024", "-np", "1", "--swa-full")
    roles = {kv.role: kv for kv in parse_load_log(server.log_text()).kv_caches}
    assert roles["swa"].cells == roles["non-swa"].cells == 1024


def test_deepseek2_mla_caches_k_only(tiny_model, llama_server):
    p = DEFAULTS["deepseek2"]
    server = llama_server(tiny_model("deepseek2"), "-c", "512", "-np", "1")
    (kv,) = parse_load_log(server.log_text()).kv_caches
    assert kv.v_mib == 0.0
    assert kv.k_mib == _mib(512 * p["n_layer"] * (p["kv_lora_rank"] + p["n_rot"]) * 2)


def test_mamba_keeps_recurrent_state_and_no_kv(tiny_model, llama_server):
    server = llama_server(tiny_model("mamba"), "-c", "512", "-np", "2")
    log = parse_load_log(server.log_text())
    assert log.kv_caches == ()
    (rs,) = log.recurrent
    assert (rs.cells, rs.n_seq) == (2, 2)
    assert rs.s_mib > 0


def test_lfm2_is_hybrid_kv_and_recurrent(tiny_model, llama_server):
    p = DEFAULTS["lfm2"]
    server = llama_server(tiny_model("lfm2"), "-c", "512", "-np", "1")
    log = parse_load_log(server.log_text())
    (kv,) = log.kv_caches
    (rs,) = log.recurrent
    assert kv.layers == sum(1 for h in p["n_head_kv"] if h > 0)
    assert (rs.cells, rs.n_seq) == (1, 1)


def test_lfm2_per_layer_kv_heads_size_each_layer(tiny_model, llama_server):
    heads = (0, 1, 0, 4)
    server = llama_server(tiny_model("lfm2", n_head_kv=heads), "-c", "512", "-np", "1")
    (kv,) = parse_load_log(server.log_text()).kv_caches
    head = DEFAULTS["lfm2"]["n_embd"] // DEFAULTS["lfm2"]["n_head"]
    assert kv.layers == 2
    assert kv.k_mib == _mib(512 * sum(heads) * head * 2)


def test_granitehybrid_has_attention_kv_and_mamba2_state(tiny_model, llama_server):
    p = DEFAULTS["granitehybrid"]
    server = llama_server(tiny_model("granitehybrid"), "-c", "512", "-np", "2")
    log = parse_load_log(server.log_text())
    (kv,) = log.kv_caches
    (rs,) = log.recurrent
    assert kv.layers == sum(1 for h in p["n_head_kv"] if h > 0)
    assert (rs.cells, rs.n_seq) == (2, 2)
    n_recurrent = sum(1 for h in p["n_head_kv"] if h == 0)
    d_inner = 2 * p["n_embd"]
    # S: one d_state x d_inner f32 state per recurrent layer and sequence
    assert rs.s_mib == _mib(n_recurrent * 2 * p["ssm_d_state"] * d_inner * 4)


def test_qwen3moe_loads_with_experts_on_cpu(tiny_model, llama_server):
    server = llama_server(tiny_model("qwen3moe"), "-c", "512", "-np", "1", "--cpu-moe")
    out = server.post_json("/completion", {"prompt": "hello", "n_predict": 4, "ignore_eos": True})
    assert out["tokens_predicted"] == 4


def test_split_model_loads_from_its_first_shard(tmp_path, llama_server):
    first = write_model("llama", tmp_path / "sp.gguf", split=2)
    assert [p.name for p in shard_paths(tmp_path / "sp.gguf", 2)] == [
        "sp-00001-of-00002.gguf",
        "sp-00002-of-00002.gguf",
    ]
    assert first.name == "sp-00001-of-00002.gguf"
    assert all(p.is_file() for p in shard_paths(tmp_path / "sp.gguf", 2))
    whole = write_model("llama", tmp_path / "whole.gguf")
    server = llama_server(first, "-c", "256", "-np", "1")
    out = server.post_json("/completion", {"prompt": "hello", "n_predict": 4, "ignore_eos": True})
    assert out["tokens_predicted"] == 4
    split_log = parse_load_log(server.log_text())
    server.stop()
    whole_log = parse_load_log(llama_server(whole, "-c", "256", "-np", "1").log_text())
    assert split_log.model_total_mib == whole_log.model_total_mib


def test_hybrid_kinds_keep_their_layout_at_another_depth(tmp_path, llama_server):
    model = write_model("granitehybrid", tmp_path / "g8.gguf", n_layer=8)
    server = llama_server(model, "-c", "256", "-np", "1")
    log = parse_load_log(server.log_text())
    assert log.kv_caches[0].layers == 2  # attention at layers 1 and 5
    assert log.recurrent[0].layers == 8


def test_same_seed_same_file_other_seed_other_weights(tmp_path):
    a = write_model("qwen3", tmp_path / "a.gguf").read_bytes()
    b = write_model("qwen3", tmp_path / "b.gguf", name="tiny-qwen3").read_bytes()
    c = write_model("qwen3", tmp_path / "c.gguf", seed=1).read_bytes()
    assert a == b
    assert len(a) == len(c) and a != c


@pytest.mark.parametrize(
    ("kind", "overrides", "message"),
    [
        ("gpt5", {}, "unknown tiny model kind 'gpt5'"),
        ("llama", {"n_layers": 3}, "unknown override(s) n_layers"),
        ("llama", {"dtype": "q4_0"}, "dtype must be"),
        ("llama", {"n_embd": 100, "n_head": 3}, "multiple of n_head"),
        ("llama", {"n_head_kv": [1, 2, 3]}, "n_head_kv list needs n_layer (2)"),
        ("mamba", {"ssm_d_inner": 100}, "ssm_d_inner == 2 * n_embd"),
        ("llama", {"n_vocab": 10}, "n_vocab must be at least"),
        ("granitehybrid", {"ssm_dt_rank": 7}, "divisible by ssm_dt_rank"),
        ("llama", {"split": 99}, "split must be in 1.."),
    ],
)
def test_bad_requests_name_what_is_wrong(tmp_path, kind, overrides, message):
    with pytest.raises(TinyModelError) as err:
        write_model(kind, tmp_path / "x.gguf", **overrides)
    assert message in str(err.value)
    assert not (tmp_path / "x.gguf").exists()
