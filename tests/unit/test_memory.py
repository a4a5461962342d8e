"""The memory model against llama.cpp's own arithmetic (worked numbers from the reference)."""

from __future__ import annotations

import dataclasses
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvwall.budget.cachetypes import CACHE_TYPES, TYPE_SIZES, row_bytes
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import max_context, plan_memory
from kvwall.budget.whatif import simulate, what_if_table
from kvwall.monitors.gguf import TensorInfo
from plan_models import make_model

GiB = 1 << 30
MiB = 1 << 20


def cfg(cmd: str = "", env: dict | None = None):
    return parse_command_line(["llama-server", "-m", "m.gguf", *shlex.split(cmd)], env)


LLAMA8B = make_model()  # 32 layers, 8 KV heads x 128, 131072 trained


def test_cache_type_sizes_are_ggmls():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for name in CACHE_TYPES:
        assert TYPE_SIZES[name] == GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]]
    assert row_bytes("q8_0", 128) == 136 and row_bytes("q4_0", 1024) == 576


@pytest.mark.parametrize(
    ("types", "gib"), [("f16", 16.0), ("q8_0", 8.5), ("q4_0", 4.5), ("f32", 32.0), ("q5_1", 6.0)]
)
def test_llama_8b_kv_at_128k(types, gib):
    plan = plan_memory(LLAMA8B, cfg(f"-c 131072 -np 1 -ctk {types} -ctv {types}"))
    assert plan.ok and plan.kv_bytes == int(gib * GiB)
    assert plan.kv_k_bytes == plan.kv_v_bytes == plan.kv_bytes // 2


def test_padding_rounds_per_slot_context_up_to_256():
    plan = plan_memory(LLAMA8B, cfg("-c 5000 -np 3"))
    assert (plan.n_ctx, plan.n_ctx_seq, plan.n_seq, plan.n_stream) == (5376, 1792, 3, 3)
    assert plan.kv_bytes == 5376 * 128 * 1024
    plan = plan_memory(LLAMA8B, cfg("-c 1000"))  # unified (-np auto): one padded pool
    assert (plan.n_ctx, plan.n_ctx_seq, plan.n_stream, plan.kv_unified) == (1024, 1024, 1, True)


def test_np_auto_means_four_unified_slots_and_says_so():
    plan = plan_memory(LLAMA8B, cfg("-c 65536"))
    assert plan.n_seq == 4 and plan.kv_unified and plan.n_ctx_slot == 65536
    assert any("-np not given" in a and "4 slots" in a for a in plan.assumptions)
    explicit = plan_memory(LLAMA8B, cfg("-c 65536 -np 4"))
    assert not explicit.kv_unified and explicit.n_ctx_slot == 16384
    assert explicit.kv_bytes == plan.kv_bytes


def test_explicit_slots_without_c_ask_for_the_trained_context_per_slot():
    plan = plan_memory(LLAMA8B, cfg("-np 4"))
    assert plan.n_ctx == 4 * 131072 and plan.kv_bytes == 64 * GiB
    off = plan_memory(LLAMA8B, cfg("-np 4 -fit off"))
    assert off.n_ctx == 131072 and off.n_ctx_seq == 32768


def test_slot_context_is_capped_to_training_and_per_slot_limit():
    plan = plan_memory(make_model(n_ctx_train=8192), cfg("-c 32768"))
    assert plan.n_ctx == 32768 and plan.n_ctx_slot == 8192
    plan = plan_memory(LLAMA8B, cfg("--kv-unified-per-slot 3000"))
    assert plan.n_ctx == 12032 and plan.n_ctx_slot == 3000


def test_gemma3_27b_swa_cache():
    gemma = make_model(
        "gemma3", n_layer=62, n_head=32, n_head_kv=16, n_swa=1024,
        swa_layers=tuple(il % 6 < 5 for il in range(62)),
    )  # fmt: skip
    plan = plan_memory(gemma, cfg("-c 131072"))
    assert plan.kv_cells_swa == 4608
    assert plan.kv_bytes - plan.kv_swa_bytes == 10 * GiB
    assert plan.kv_swa_bytes == 52 * 4608 * 16 * 128 * 2 * 2
    full = plan_memory(gemma, cfg("-c 131072 --swa-full"))
    assert full.kv_swa_bytes == 52 * GiB and full.kv_cells_swa == 131072


def test_gpt_oss_swa_cells_with_unified_slots():
    oss = make_model(
        "gpt-oss", n_layer=24, n_head=64, n_head_kv=8, head_k=64, head_v=64, n_swa=128,
        swa_layers=tuple(il % 2 == 0 for il in range(24)),
    )  # fmt: skip
    plan = plan_memory(oss, cfg("-c 131072"))
    assert plan.kv_cells_swa == 1024
    assert plan.kv_bytes - plan.kv_swa_bytes == 3072 * MiB and plan.kv_swa_bytes == 24 * MiB
    split = plan_memory(oss, cfg("-c 131072 -np 4"))  # non-unified: n_swa + ub per stream
    assert split.kv_cells_swa == 768 and split.kv_swa_bytes == 4 * 12 * 768 * 1024 * 2


def deepseek_v3():
    return make_model(
        "deepseek2", n_layer=61, n_head=128, n_head_kv=1, head_k=576, head_v=512,
        is_mla=True, head_k_mla=192, head_v_mla=128, kv_lora_rank=512, n_ctx_train=163840,
    )  # fmt: skip


def test_mla_caches_k_only():
    plan = plan_memory(deepseek_v3(), cfg("-c 131072 -np 1"))
    assert plan.kv_v_bytes == 0 and plan.kv_bytes == 61 * 576 * 2 * 131072
    assert round(plan.kv_bytes / GiB, 2) == 8.58
    q8 = plan_memory(deepseek_v3(), cfg("-c 131072 -np 1 -ctk q8_0 -ctv q8_0"))
    assert round(q8.kv_bytes / GiB, 2) == 4.56


def test_refusals_carry_llama_cpps_reason_and_no_numbers():
    plan = plan_memory(deepseek_v3(), cfg("-c 4096 -ctk q8_0"))
    assert plan.errors == ("model does not support different K (q8_0) and V (f16) cache types",)
    assert plan.total_bytes == 0 and plan.devices == ()
    plan = plan_memory(LLAMA8B, cfg("-c 4096 -ctv q4_0 -fa off"))
    assert plan.errors == ("quantized V cache requires flash_attn to be enabled",)
    odd = make_model(head_k=80, head_v=80, n_head_kv=8)
    plan = plan_memory(odd, cfg("-c 4096 -ctk q8_0 -ctv q8_0"))
    assert plan.errors == ("K cache type q8_0 with block size 32 does not divide n_embd_head_k=80",)
    assert plan_memory(odd, cfg("-c 4096 -ctk q8_0 -fa off")).ok  # 8 x 80 = 640 values per row
    narrow = make_model(head_k=40, head_v=40, n_head_kv=2)
    assert "multiple of its block size" in plan_memory(narrow, cfg("-ctk q8_0 -fa off")).errors[0]
    assert plan_memory(LLAMA8B, cfg("-np 300")).errors == ("n_seq_max must be <= 256",)


def test_quantized_v_switches_auto_flash_attention_on():
    plan = plan_memory(LLAMA8B, cfg("-c 4096 -ctv q8_0"))
    assert plan.ok and plan.flash_attn == "on"
    assert any("flash attention switched on" in a for a in plan.assumptions)


def test_fa_off_pads_v_rows_to_the_widest_layer():
    # Gemma-4 style: SWA layers 256-wide heads, full layers 512
    g4 = make_model(
        "gemma4", n_layer=6, n_head=8, n_head_kv=2, head_k=512, head_v=512, head_k_swa=256,
        head_v_swa=256, n_swa=1024, swa_layers=(True, True, True, True, True, False),
    )  # fmt: skip
    on = plan_memory(g4, cfg("-c 8192 -np 1 --swa-full"))
    off = plan_memory(g4, cfg("-c 8192 -np 1 --swa-full -fa off"))
    assert on.kv_k_bytes == off.kv_k_bytes
    assert on.kv_v_bytes == 8192 * 2 * (5 * 2 * 256 + 2 * 512)
    assert off.kv_v_bytes == 8192 * 2 * 6 * 2 * 512


def test_layers_without_kv_and_nextn_layers_hold_no_cache():
    shared = make_model(n_layer=30, n_layer_kv_from_start=20)
    assert plan_memory(shared, cfg("-c 4096 -np 1")).kv_layers == 20
    mtp = make_model(n_layer=62, n_layer_nextn=1)
    plan = plan_memory(mtp, cfg("-c 4096 -np 1"))
    assert plan.kv_layers == 61 and plan.kv_bytes == 61 * 4096 * 1024 * 2 * 2


def test_per_layer_head_counts():
    m = make_model(n_layer=4, n_head_kv=(8, 0, 4, 8))
    plan = plan_memory(m, cfg("-c 1024 -np 1"))
    assert plan.kv_bytes == 1024 * 128 * 2 * 2 * (8 + 0 + 4 + 8)


def qwen3_next():
    return make_model(
        "qwen3next", n_layer=48, n_head_kv=2, head_k=256, head_v=256,
        recurrent_layers=tuple(il % 4 != 3 for il in range(48)),
        ssm_d_conv=4, ssm_d_inner=4096, ssm_d_state=128, ssm_n_group=16,
    )  # fmt: skip


def test_recurrent_state_scales_with_slots_not_context():
    small = plan_memory(qwen3_next(), cfg("-c 4096 -np 1"))
    big = plan_memory(qwen3_next(), cfg("-c 65536 -np 1"))
    assert small.recurrent_bytes == big.recurrent_bytes
    assert round(small.recurrent_bytes / MiB, 1) == 75.4
    four = plan_memory(qwen3_next(), cfg("-c 4096"))
    assert four.recurrent_bytes == 4 * small.recurrent_bytes
    assert small.kv_layers == 12


def test_speculative_rollback_multiplies_recurrent_rows_on_supporting_archs():
    q35 = make_model(
        "qwen35", n_layer=8, recurrent_layers=(True, True, True, False) * 2,
        ssm_d_conv=4, ssm_d_inner=1024, ssm_d_state=64, ssm_n_group=4,
    )  # fmt: skip
    base = plan_memory(q35, cfg("-c 4096 -np 2"))
    mtp = plan_memory(q35, cfg("-c 4096 -np 2 --spec-type draft-mtp"))
    assert mtp.recurrent_bytes == 4 * base.recurrent_bytes and mtp.n_rs_seq == 3
    plain = plan_memory(qwen3_next(), cfg("-c 4096 -np 2 --spec-type draft-mtp"))
    assert plain.n_rs_seq == 0


def test_mamba_and_rwkv_have_state_only():
    mamba = make_model(
        "mamba", n_layer=2, n_embd=64, n_head=0, n_head_kv=0, ssm_d_conv=4, ssm_d_inner=128,
        ssm_d_state=16, recurrent_layers=(True, True),
    )  # fmt: skip
    plan = plan_memory(mamba, cfg("-np 3"))
    assert plan.kv_bytes == 0 and plan.recurrent_bytes == 2 * 3 * (3 * 128 + 16 * 128) * 4
    rwkv = make_model(
        "rwkv7", n_layer=4, n_embd=256, n_head=0, n_head_kv=0, wkv_head_size=64,
        token_shift_count=2, recurrent_layers=(True,) * 4,
    )  # fmt: skip
    assert plan_memory(rwkv, cfg("-np 1")).recurrent_bytes == 4 * (2 * 256 + 256 * 64) * 4


def test_fit_on_a_cpu_only_machine_shrinks_toward_total_memory():
    full = plan_memory(LLAMA8B, cfg("-np 1"), free_bytes=1 << 50)
    assert full.n_ctx == 131072
    # 16 GiB of weights+KV at the full context; give it room for about half of the KV
    plan = plan_memory(LLAMA8B, cfg("-np 1"), free_bytes=10 * GiB)
    assert 4096 < plan.n_ctx < 131072 and plan.n_ctx % 256 == 0
    assert plan.total_bytes <= 10 * GiB - 1024 * MiB + 256 * 128 * 1024  # within one step
    assert any("--fit shrinks the context" in a for a in plan.assumptions)
    floor = plan_memory(LLAMA8B, cfg("-np 1"), free_bytes=1 * GiB)
    assert floor.n_ctx == 4096
    pinned = plan_memory(LLAMA8B, cfg("-np 1 -c 0"), free_bytes=1 * GiB)
    assert pinned.n_ctx == 131072


def _laid_out(tensors):
    """The tensors with file offsets, packed in order as a GGUF lays them out."""
    out, offset = [], 0
    for t in tensors:
        out.append(dataclasses.replace(t, offset=offset))
        offset += t.n_bytes
    return tuple(out)


def test_weights_follow_gpu_layers_and_expert_overrides():
    n = 4
    tensors = (
        TensorInfo("token_embd.weight", "f16", 1, (64, 100), 1000),
        *(TensorInfo(f"blk.{i}.attn_q.weight", "f16", 1, (64, 64), 100) for i in range(n)),
        *(TensorInfo(f"blk.{i}.ffn_up_exps.weight", "f16", 1, (64, 64, 8), 800) for i in range(n)),
        TensorInfo("output.weight", "f16", 1, (64, 100), 2000),
    )
    m = make_model(n_layer=n, tensors=tensors, n_head_kv=1, head_k=64, head_v=64)
    by = lambda plan: {d.name: d.weights_bytes for d in plan.devices}  # noqa: E731
    gpu = ("CUDA0",)
    assert by(plan_memory(m, cfg("-lm none -c 256"), gpu_names=gpu)) == {"CUDA0": 5600, "Host": 1000}
    assert by(plan_memory(m, cfg("-lm none -c 256 -ngl 2"), gpu_names=gpu)) == {"CUDA0": 2900, "Host": 3700}
    assert by(plan_memory(m, cfg("-lm none -c 256 -cmoe"), gpu_names=gpu)) == {"CUDA0": 2400, "Host": 4200}
    assert by(plan_memory(m, cfg("-lm none -c 256 -ncmoe 1"), gpu_names=gpu)) == {"CUDA0": 4800, "Host": 1800}
    # with mmap (the default) the host's buffer is the file range from its first to its last
    # host tensor: attn 3 (on the GPU) sits inside it
    laid = make_model(n_layer=n, tensors=_laid_out(tensors), n_head_kv=1, head_k=64, head_v=64)
    assert by(plan_memory(laid, cfg("-c 256 -ngl 2"), gpu_names=gpu)) == {"CUDA0": 2900, "Host": 3800}
    assert by(plan_memory(m, cfg("-lm none -c 256"))) == {"Host": 6600}
    kv = {d.name: d.kv_bytes for d in plan_memory(m, cfg("-c 256 -np 1 -ngl 2"), gpu_names=gpu).devices}
    assert kv == {"CUDA0": 256 * 64 * 2 * 2, "Host": 3 * 256 * 64 * 2 * 2}
    nkvo = plan_memory(m, cfg("-c 256 -np 1 -nkvo"), gpu_names=gpu)
    assert {d.name: d.kv_bytes for d in nkvo.devices} == {"CUDA0": 0, "Host": 4 * 256 * 64 * 4}


def test_layers_split_over_gpus_by_tensor_split_like_llama_cpp():
    n = 4
    tensors = (
        TensorInfo("token_embd.weight", "f16", 1, (64, 100), 1000),
        *(TensorInfo(f"blk.{i}.attn_q.weight", "f16", 1, (64, 64), 900) for i in range(n)),
        TensorInfo("output.weight", "f16", 1, (64, 100), 2000),
    )
    m = make_model(n_layer=n, tensors=tensors, n_head_kv=1, head_k=64, head_v=64)
    gpus = ("CUDA0", "CUDA1")
    by = lambda flags: {d.name: d.weights_bytes for d in plan_memory(m, cfg(flags), gpu_names=gpus).devices}  # noqa: E731
    # 5 units (4 layers + output) over equal shares: positions 0, .2, .4 -> CUDA0; .6, .8 -> CUDA1
    assert by("-c 256") == {"CUDA0": 2700, "CUDA1": 2900, "Host": 1000}
    even = plan_memory(m, cfg("-c 256"), gpu_names=gpus)
    assert any("split evenly" in a and "-ts" in a for a in even.assumptions)
    assert by("-c 256 -ts 3,1") == {"CUDA0": 3600, "CUDA1": 2000, "Host": 1000}
    assert by("-c 256 -ts 0,1") == {"CUDA0": 0, "CUDA1": 5600, "Host": 1000}
    assert by("-c 256 -sm none") == {"CUDA0": 5600, "Host": 1000}


def test_split_mode_tensor_and_negative_context_are_refused_like_llama_cpp():
    assert plan_memory(LLAMA8B, cfg("-c 4096 -sm tensor")).errors == (
        "LLAMA_SPLIT_MODE_TENSOR needs >= 1 devices",
    )
    gpus = ("CUDA0", "CUDA1")
    plan = plan_memory(LLAMA8B, cfg("-c 4096 -sm tensor -fa off"), gpu_names=gpus)
    assert plan.errors == ("SPLIT_MODE_TENSOR requires flash_attn to be enabled",)
    plan = plan_memory(LLAMA8B, cfg("-c 4096 -sm tensor"), gpu_names=gpus)
    assert plan.ok and plan.flash_attn_effective
    plan = plan_memory(LLAMA8B, cfg("-c -5"))
    assert not plan.ok and "-c -5" in plan.errors[0] and plan.total_bytes == 0
    plan = plan_memory(LLAMA8B, cfg("-c 4096 -b 0"))  # n_batch 0 with -ub 512: llama.cpp aborts
    assert not plan.ok and "-b 0" in plan.errors[0]
    assert plan_memory(LLAMA8B, cfg("-c 4096 -ub 0")).n_ubatch == 2048  # -ub 0 means -b (2048)
    assert plan_memory(LLAMA8B, cfg("-c 4096 --cache-ram -5")).cache_ram_bytes == -1  # no limit


def test_totals_add_up():
    plan = plan_memory(LLAMA8B, cfg("-c 8192 --cache-ram 4096"))
    assert plan.total_bytes == (
        plan.weights_bytes + plan.kv_bytes + plan.recurrent_bytes + plan.compute_bytes + plan.output_bytes
    )
    assert sum(d.total_bytes for d in plan.devices) == plan.total_bytes
    assert plan.output_bytes == 128256 * 4 * 4 and plan.cache_ram_bytes == 4096 * MiB


def test_compute_without_flash_attention_holds_the_kq_matrix():
    on = plan_memory(LLAMA8B, cfg("-c 8192 -np 1 -fa on"))
    off = plan_memory(LLAMA8B, cfg("-c 8192 -np 1 -fa off"))
    kq = 8192 * 512 * 32 * 4  # n_kv x n_ubatch x n_head f32
    assert off.compute_bytes > kq > on.compute_bytes


@settings(max_examples=40, deadline=None)
@given(st.integers(2 * GiB, 64 * GiB), st.sampled_from(["-np 1", "", "-np 3 -ctk q8_0 -ctv q8_0"]))
def test_max_context_is_the_largest_that_fits(memory, flags):
    config = cfg(flags)
    best = max_context(LLAMA8B, config, memory)
    if best == 0:
        assert plan_memory(LLAMA8B, config.replace(n_ctx=256 * 3)).total_bytes > memory
        return
    assert plan_memory(LLAMA8B, config.replace(n_ctx=best)).total_bytes <= memory
    step = 256 * (3 if "-np 3" in flags else 1)
    if best < 131072 * (3 if "-np 3" in flags else 4 if not flags else 1):
        assert plan_memory(LLAMA8B, config.replace(n_ctx=best + step)).total_bytes > memory


def test_what_if_table_grid_and_commands():
    config = cfg("-c 32768 --api-key secret")
    rows = what_if_table(LLAMA8B, config, memory_bytes=24 * GiB, extra_cache_types=["q5_0"])
    labels = [r.label for r in rows]
    assert len(rows) == 4 * 4  # f16/q8_0/q4_0/q5_0 x 4 (current), 3, 2, 1 slots
    assert labels[0] == "current"
    by = {r.label: r for r in rows}
    assert by["q8_0 cache"].saves_bytes == 4 * GiB - 2176 * MiB  # f16 4 GiB -> q8_0 2.125 GiB
    assert by["q4_0 cache"].saves_bytes > by["q5_0 cache"].saves_bytes > by["q8_0 cache"].saves_bytes
    assert by["q8_0 cache"].max_ctx > by["current"].max_ctx
    for row in rows:
        assert "secret" not in row.command
        again = parse_command_line(shlex.split(row.command.replace('"$LLAMA_API_KEY"', "k")))
        assert plan_memory(LLAMA8B, again).kv_bytes == row.plan.kv_bytes
    two = by["2 slots"]  # a unified pool keeps its size: each of 2 slots may use all of it
    assert two.plan.n_ctx == 32768 and two.plan.kv_unified and "-np 2 -kvu" in two.command
    assert two.plan.kv_bytes == by["current"].plan.kv_bytes


def test_what_if_fewer_split_slots_keep_each_slots_context():
    rows = what_if_table(LLAMA8B, cfg("-c 32768 -np 4"), memory_bytes=24 * GiB)
    one = next(r for r in rows if r.label == "1 slot")
    assert one.plan.n_ctx == one.plan.n_ctx_slot == 8192
    assert one.saves_bytes >= 3 * GiB and "-c 8192" in one.command


def test_what_if_with_fa_off_turns_flash_attention_on_for_quantized_rows():
    rows = what_if_table(LLAMA8B, cfg("-c 8192 -np 2 -fa off"), memory_bytes=24 * GiB)
    q8 = next(r for r in rows if r.label.startswith("q8_0 cache"))
    assert q8.changes["flash_attn"] == "on" and not q8.refused and "-fa on" in q8.command


def test_simulate_keeps_the_current_context_and_reports_refusals():
    mla = deepseek_v3()
    w = simulate(mla, cfg("-c 4096 -np 1"), {"cache_type_k": "q8_0"}, memory_bytes=GiB)
    assert w.refused and "different K" in w.caveat and w.max_ctx == 0
    w = simulate(LLAMA8B, cfg("-np 1"), {"n_parallel": 2}, memory_bytes=64 * GiB)
    assert w.plan.n_ctx == 131072 and "-c 131072" in w.command


def test_extra_cache_type_must_be_allowed():
    with pytest.raises(ValueError, match="Unsupported cache type: q2_k"):
        what_if_table(LLAMA8B, cfg("-c 4096"), memory_bytes=GiB, extra_cache_types=["q2_k"])


def test_what_if_says_a_refused_cache_type_once_and_skips_types_without_a_kv_cache():
    odd = make_model(head_k=80, head_v=80, n_head_kv=8)  # 80 is not a multiple of 32
    rows = what_if_table(odd, cfg("-c 8192 -np 4"), memory_bytes=24 * GiB)
    q8 = [r for r in rows if r.label.startswith("q8_0")]
    assert len(q8) == 1 and q8[0].refused and "n_embd_head_k=80" in q8[0].plan.errors[0]
    assert [r.label for r in rows if not r.refused] == ["current", "3 slots", "2 slots", "1 slot"]
    mamba = make_model(
        "mamba", n_layer=2, n_embd=64, n_head=0, n_head_kv=0, ssm_d_conv=4, ssm_d_inner=128,
        ssm_d_state=16, recurrent_layers=(True, True),
    )  # fmt: skip
    rows = what_if_table(mamba, cfg("-np 4"), memory_bytes=GiB)
    assert [r.label for r in rows] == ["current", "3 slots", "2 slots", "1 slot"]
    assert all(r.saves_bytes > 0 for r in rows[1:])  # fewer slots, fewer recurrent states


def test_fit_margin_per_gpu_follows_fit_target_like_llama_server():
    gpus = ("CUDA0", "CUDA1", "CUDA2")

    def margin(flags: str) -> str:
        plan = plan_memory(LLAMA8B, cfg(f"-np 1 {flags}"), gpu_names=gpus, free_bytes=20 * GiB)
        return next(a for a in plan.assumptions if "--fit shrinks" in a)

    assert "keep 3,072 MiB" in margin("")  # the default 1024 MiB on each of 3 GPUs
    assert "keep 1,536 MiB" in margin("-fitt 512")  # one value: broadcast to every GPU
    assert "keep 3,584 MiB" in margin("-fitt 512,2048")  # a list: the third GPU keeps 1024


def test_cells_no_slot_can_reach_are_pointed_out_with_a_smaller_c():
    small = make_model(n_ctx_train=4096)
    plan = plan_memory(small, cfg("-c 10000 -np 1"))  # llama-server caps the slot at 4096
    note = next(a for a in plan.assumptions if "capped at 4096" in a)
    assert "10240" in note and "-c 4096" in note
    assert plan_memory(small, cfg("-c 4096 -np 1")).kv_bytes < plan.kv_bytes
    plan = plan_memory(small, cfg("-c 8192 -np 2 --kv-unified-per-slot 3000"))
    assert any("--kv-unified-per-slot" in a and "-c 6000" in a for a in plan.assumptions)
    # nothing to gain: -c 4000 pads back to the same 4096 cells
    plan = plan_memory(small, cfg("--kv-unified-per-slot 1000"))
    assert not any("capped" in a for a in plan.assumptions)


def test_launch_refusals_are_the_cli_s_and_live_in_the_memory_model():
    import dataclasses
    import sys

    from kvwall.budget.memory import LaunchError, check_command_line, check_model_file

    check_command_line(cfg("-c 4096"))
    with pytest.raises(LaunchError, match="invalid argument: --frobnicate"):
        check_command_line(cfg("--frobnicate"))
    model = dataclasses.replace(LLAMA8B, path="/models/m-00001-of-00002.gguf",
                                paths=("/models/m-00001-of-00002.gguf", "/models/m-00002-of-00002.gguf"))
    check_model_file(model, parse_command_line(["llama-server", "-m", model.path]))
    with pytest.raises(LaunchError, match="illegal split file idx"):
        check_model_file(model, parse_command_line(["llama-server", "-m", model.paths[1]]))
    if sys.byteorder == "little":
        with pytest.raises(LaunchError, match="big-endian"):
            check_model_file(dataclasses.replace(LLAMA8B, big_endian=True), cfg())
