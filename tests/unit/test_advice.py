"""Advice on real tiny GGUF models and the real memory model: every command is valid and
really saves what it claims when planned again from its own text."""

from __future__ import annotations

import shlex

import pytest
from kvwall.app.demo.tinymodels import write_model
from kvwall.budget.advice import POOL_GPU, POOL_TOTAL, advise, largest_context, pool_bytes
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import plan_memory
from kvwall.monitors.gguf import read_model
from kvwall.monitors.snapshot import SlotState

GIB = 1024**3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "qwen3": read_model(str(write_model("qwen3", root / "qwen3.gguf", n_ctx_train=8192))),
        "odd_head": read_model(str(write_model("qwen3", root / "odd.gguf", head_k=48, head_v=48,
                                               n_ctx_train=8192))),
        # experts big enough to outweigh what offloading them adds to the GPU compute buffer
        "moe": read_model(str(write_model("qwen3moe", root / "moe.gguf", n_ctx_train=8192, n_expert=16, n_ff_exp=256))),
        "mla": read_model(str(write_model("deepseek2", root / "mla.gguf", n_ctx_train=8192))),
    }


def setup(model, *flags, gpus=()):
    config = parse_command_line(["llama-server", "-m", model.path, *flags])
    return config, plan_memory(model, config, gpu_names=gpus)


def replan(model, command, gpus=()):
    argv = shlex.split(command)
    return plan_memory(model, parse_command_line(argv), gpu_names=gpus)


def check_claims(model, plan, advice, pool=POOL_TOTAL, gpus=()):
    """Each command, planned from its own text, is accepted and saves what it says."""
    for a in advice:
        if a.action == "cache-ram":
            continue
        new = replan(model, a.command, gpus)
        assert not new.errors, (a.action, new.errors)
        assert pool_bytes(plan, pool) - pool_bytes(new, pool) == a.saves_bytes, a.action
        assert a.max_ctx > 0
        assert a.caveat


def test_fa_off_f16_server_gets_ranked_valid_advice(models):
    m = models["qwen3"]
    config, plan = setup(m, "-c", "4096", "-np", "2", "-fa", "off")
    advice = advise(m, config, plan, budget_bytes=2 * plan.total_bytes)
    actions = [a.action for a in advice]
    assert {"cache-q8_0", "cache-q4_0", "flash-attn-on", "fewer-slots", "ubatch"} <= set(actions)
    saves = [a.saves_bytes for a in advice]
    assert saves == sorted(saves, reverse=True)
    check_claims(m, plan, advice)
    q8 = next(a for a in advice if a.action == "cache-q8_0")
    # A quantized V cache needs flash attention: the command turns it on.
    assert "-fa on" in q8.command and "-fa off" not in q8.command
    assert "-ctk q8_0" in q8.command and "-ctv q8_0" in q8.command
    fewer = next(a for a in advice if a.action == "fewer-slots")
    assert replan(m, fewer.command).n_ctx_slot == plan.n_ctx_slot  # each slot keeps its room


def test_quantized_cache_halves_kv(models):
    m = models["qwen3"]
    config, plan = setup(m, "-c", "4096", "-fa", "on")
    advice = {a.action: a for a in advise(m, config, plan, budget_bytes=2 * plan.total_bytes)}
    q8, q4 = advice["cache-q8_0"], advice["cache-q4_0"]
    assert q8.saves_bytes == pytest.approx(plan.kv_bytes * (1 - 34 / 64), rel=0.01)
    assert q4.saves_bytes == pytest.approx(plan.kv_bytes * (1 - 18 / 64), rel=0.01)
    assert q4.max_ctx >= q8.max_ctx
    assert "flash-attn-on" not in advice
    check_claims(m, plan, tuple(advice.values()))


def test_no_quantized_cache_when_head_size_forbids_it(models):
    m = models["odd_head"]  # head size 48 is not a multiple of the 32-element block
    config, plan = setup(m, "-c", "2048")
    assert plan.ok
    advice = advise(m, config, plan, budget_bytes=2 * plan.total_bytes)
    assert not any(a.action.startswith("cache-q") for a in advice)
    check_claims(m, plan, advice)


def test_already_q8_0_only_offers_q4_0(models):
    m = models["qwen3"]
    config, plan = setup(m, "-c", "4096", "-ctk", "q8_0", "-ctv", "q8_0")
    actions = {a.action for a in advise(m, config, plan, budget_bytes=2 * plan.total_bytes)}
    assert "cache-q4_0" in actions and "cache-q8_0" not in actions


def test_mla_model_cache_advice_keeps_k_and_v_equal(models):
    m = models["mla"]
    config, plan = setup(m, "-c", "4096")
    assert plan.ok
    advice = advise(m, config, plan, budget_bytes=2 * plan.total_bytes)
    check_claims(m, plan, advice)
    for a in advice:
        argv = shlex.split(a.command)
        if "-ctk" in argv:
            assert argv[argv.index("-ctk") + 1] == argv[argv.index("-ctv") + 1]


def test_mostly_idle_split_slots_suggest_a_unified_pool(models):
    m = models["qwen3"]
    config, plan = setup(m, "-c", "8192", "-np", "4")
    slots = [SlotState(0, plan.n_ctx_slot, 1500, True, 5)] + [
        SlotState(i, plan.n_ctx_slot, 0, False) for i in range(1, 4)
    ]
    advice = advise(m, config, plan, budget_bytes=2 * plan.total_bytes, slots=slots)
    unified = next(a for a in advice if a.action == "kv-unified")
    new = replan(m, unified.command)
    assert new.kv_unified
    assert new.n_ctx_slot >= plan.n_ctx_slot  # the busy agent keeps its room
    assert new.n_ctx == 2 * plan.n_ctx_seq
    check_claims(m, plan, advice)
    busy = [SlotState(i, plan.n_ctx_slot, 900, True, i) for i in range(4)]
    advice_busy = advise(m, config, plan, budget_bytes=2 * plan.total_bytes, slots=busy)
    assert "kv-unified" not in {a.action for a in advice_busy}


def test_experts_to_cpu_only_help_a_gpu(models):
    m = models["moe"]
    gpus = ("CUDA0",)
    config, plan = setup(m, "-c", "4096", gpus=gpus)
    budget = 2 * pool_bytes(plan, POOL_GPU)
    advice = advise(m, config, plan, budget_bytes=budget, gpu_names=gpus, pool=POOL_GPU)
    moe = [a for a in advice if a.action == "cpu-moe"]
    assert len(moe) == 1 and moe[0].saves_bytes > 0  # one fix per lever: the least moved
    moved = parse_command_line(shlex.split(moe[0].command))
    assert moved.n_cpu_moe > 0 or moved.override_tensor  # -ncmoe N, else -ot exps=CPU
    assert replan(m, moe[0].command, gpus).placement.cpu_expert_layers  # experts on the CPU
    check_claims(m, plan, advice, pool=POOL_GPU, gpus=gpus)
    cpu_config, cpu_plan = setup(m, "-c", "4096")
    cpu_advice = advise(m, cpu_config, cpu_plan, budget_bytes=2 * cpu_plan.total_bytes)
    assert "cpu-moe" not in {a.action for a in cpu_advice}


def test_cache_ram_advice_only_when_host_ram_is_short(models):
    m = models["qwen3"]
    config, plan = setup(m, "-c", "4096")  # default --cache-ram 8192 MiB
    short = advise(m, config, plan, budget_bytes=2 * plan.total_bytes,
                   host_total_bytes=16 * GIB, host_free_bytes=2 * GIB)
    ram = next(a for a in short if a.action == "cache-ram")
    assert ram.saves_bytes == (8192 - 1024) * 1024**2
    assert parse_command_line(shlex.split(ram.command)).cache_ram_mib == 1024
    plenty = advise(m, config, plan, budget_bytes=2 * plan.total_bytes,
                    host_total_bytes=64 * GIB, host_free_bytes=40 * GIB)
    assert "cache-ram" not in {a.action for a in plenty}
    gpu_config, gpu_plan = setup(m, "-c", "4096", "-fa", "off", gpus=("CUDA0",))
    gpu = advise(m, gpu_config, gpu_plan, budget_bytes=2 * pool_bytes(gpu_plan, POOL_GPU),
                 gpu_names=("CUDA0",), pool=POOL_GPU, host_total_bytes=16 * GIB,
                 host_free_bytes=GIB)
    assert gpu[-1].action == "cache-ram"  # host RAM is not the short pool on a GPU


def test_api_key_never_appears_in_commands(models):
    m = models["qwen3"]
    config, plan = setup(m, "-c", "4096", "--api-key", "sekrit-123", "-fa", "off")
    advice = advise(m, config, plan, budget_bytes=2 * plan.total_bytes)
    assert advice
    assert all("sekrit-123" not in a.command for a in advice)


def test_refused_configuration_gets_no_advice(models):
    m = models["qwen3"]
    config, plan = setup(m, "-c", "4096", "-ctv", "q8_0", "-fa", "off")
    assert plan.errors
    assert advise(m, config, plan, budget_bytes=GIB) == ()


@pytest.mark.parametrize("flags", [("-np", "1"), ("-np", "3"), ()])
def test_largest_context_is_the_largest_that_fits(models, flags):
    m = models["qwen3"]
    config, plan = setup(m, "-c", "2048", *flags)
    budget = plan.total_bytes + 3 * 1024**2
    ctx = largest_context(m, config, budget)
    assert ctx > 0
    fitted = plan_memory(m, config.replace(n_ctx=ctx))
    assert fitted.total_bytes <= budget
    step = 256 * fitted.n_stream
    if ctx < m.n_ctx_train * fitted.n_seq:
        bigger = plan_memory(m, config.replace(n_ctx=ctx + step))
        assert bigger.total_bytes > budget
    assert largest_context(m, config, 1024) == 0


def test_fewer_unified_slots_free_nothing_and_are_not_suggested(models):
    m = models["qwen3"]
    config, plan = setup(m, "-c", "8192")  # -np auto: 4 slots sharing one pool
    assert plan.kv_unified and plan.n_seq == 4
    advice = advise(m, config, plan, budget_bytes=2 * plan.total_bytes)
    assert "fewer-slots" not in {a.action for a in advice}
    assert all(a.saves_bytes >= 0.01 * plan.total_bytes for a in advice)
