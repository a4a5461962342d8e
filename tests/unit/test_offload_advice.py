"""Problem-first offload advice (issue 8) on header-only files of real shapes: a 70B that
does not fit a 24 GiB GPU gets -ngl, a 35B MoE on 16 GiB gets its experts moved, a filling
slot on a GPU gets context bought with offload; each command planned again from its text."""

from __future__ import annotations

import shlex

from kvwall.budget.advice import (
    ADVICE_COST,
    POOL_GPU,
    ServerView,
    advice_in_view,
    advice_options,
    pool_bytes,
    problems_in_view,
)
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import plan_memory
from kvwall.budget.memory.plan import fits_devices
from kvwall.budget.report import Forecast, SlotReport

GIB = 1 << 30
GPUS = ("CUDA0",)


def setup(model, *flags, free=None):
    config = parse_command_line(["llama-server", "-m", model.path, *flags])
    return config, plan_memory(model, config, gpu_names=GPUS, device_free=free)


def view(plan, budget, slots=()):
    return ServerView(tuple(slots), None, None, pool_bytes(plan, POOL_GPU), budget)


def fixes(model, config, plan, budget, slots=(), free=None):
    options = advice_options(model, config, plan, budget_bytes=budget, gpu_names=GPUS, pool=POOL_GPU,
                             device_free=free)
    problems = problems_in_view(view(plan, budget, slots))
    return problems, advice_in_view(options, problems, slots)


def replan(model, command, free=None):
    return plan_memory(model, parse_command_line(shlex.split(command)), gpu_names=GPUS, device_free=free)


def test_a_70b_that_does_not_fit_24_gib_is_told_how_many_layers_to_keep_on_the_gpu(shapes):
    m = shapes["70b"]
    # A running server whose device memory kvwall did not see: the plan keeps every layer
    # on the GPU (47 GiB), the pool has 24 GiB.
    config, plan = setup(m, "-c", "32768")
    problems, advice = fixes(m, config, plan, 24 * GIB)
    assert [p.solves for p in problems] == ["memory"]
    assert advice, "no fix for a 70B on 24 GiB"
    first = advice[0]
    assert first.action == "gpu-layers" and "-ngl" in first.title and "32k context fits in 24.0 GiB" in first.title
    for a in advice:  # every fix offered makes it fit: a q8_0 cache alone does not
        new = replan(m, a.command)
        assert pool_bytes(new, POOL_GPU) <= 24 * GIB, a.title
        assert pool_bytes(plan, POOL_GPU) - pool_bytes(new, POOL_GPU) == a.saves_bytes
    assert not any(a.action.startswith("cache-q") for a in advice)
    kept = parse_command_line(shlex.split(first.command))
    more = plan_memory(m, kept.replace(n_gpu_layers=kept.n_gpu_layers + 1), gpu_names=GPUS)
    assert pool_bytes(more, POOL_GPU) > 24 * GIB  # the most layers that fit, not fewer


def test_with_ngl_99_and_the_free_memory_known_the_same_layers_fix_it(shapes):
    m = shapes["70b"]
    free = {"CUDA0": 24 * GIB}
    config, plan = setup(m, "-c", "32768", "-ngl", "99", free=free)
    assert plan.placement.fit == "failed"  # -ngl set: --fit gives up
    _, advice = fixes(m, config, plan, 24 * GIB, free=free)
    first = advice[0]
    assert first.action == "gpu-layers"
    assert fits_devices(replan(m, first.command, free), 24 * GIB, GPUS, free)


def test_a_moe_on_16_gib_moves_experts_first(shapes):
    m = shapes["moe"]
    config, plan = setup(m, "-c", "65536")
    problems, advice = fixes(m, config, plan, 16 * GIB)
    assert [p.solves for p in problems] == ["memory"]
    actions = [a.action for a in advice]
    assert actions[0] == "cpu-moe" and "gpu-layers" in actions  # experts cost less speed
    assert actions == sorted(actions, key=ADVICE_COST.__getitem__)
    experts = advice[0]
    n = parse_command_line(shlex.split(experts.command)).n_cpu_moe
    assert experts.title.startswith(f"move the experts of {n} layers to the CPU (-ncmoe {n})")
    assert "64k context fits in 16.0 GiB" in experts.title and "host memory" in experts.caveat
    assert pool_bytes(replan(m, experts.command), POOL_GPU) <= 16 * GIB
    fewer = plan_memory(m, config.replace(n_cpu_moe=n - 1), gpu_names=GPUS)
    assert pool_bytes(fewer, POOL_GPU) > 16 * GIB  # the fewest experts that let it fit


def test_a_filling_slot_on_a_gpu_gets_context_bought_with_offload(shapes):
    m = shapes["moe"]
    # the fewest expert layers on the CPU that let one 16k slot fit in 16 GiB
    now = next(n for n in range(m.n_layer) if pool_bytes(setup(m, "-c", "16384", "-np", "1", "-ncmoe", str(n))[1],
                                                        POOL_GPU) <= 16 * GIB)
    config, plan = setup(m, "-c", "16384", "-np", "1", "-ncmoe", str(now))
    slots = [SlotReport(0, plan.n_ctx_slot, 15000, True,
                        Forecast(tokens_per_turn=500.0, turns_left=3, confidence=1.0, turns_seen=4))]
    problems, advice = fixes(m, config, plan, 16 * GIB, slots)
    assert [p.solves for p in problems] == ["context"]
    offload = [a for a in advice if a.action in ("cpu-moe", "gpu-layers")]
    assert offload, [a.title for a in advice]
    for a in offload:
        new = replan(m, a.command)
        assert new.n_ctx_slot == a.n_ctx_slot == 2 * plan.n_ctx_slot  # twice the context
        assert pool_bytes(new, POOL_GPU) <= 0.95 * 16 * GIB  # with the usual headroom
        assert a.turns_left is not None and a.turns_left > 3  # it buys requests
    moe = next(a for a in offload if a.action == "cpu-moe")
    n = parse_command_line(shlex.split(moe.command)).n_cpu_moe
    assert n > now and "32k context fits in 16.0 GiB" in moe.title
