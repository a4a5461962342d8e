"""Offload what-ifs (issue 8): -ngl, -ncmoe, -ot exps=CPU, -nkvo and -ts rows on tiny real
GGUF models and on header-only files of real shapes, each command planned again from its
own text."""

from __future__ import annotations

import shlex

import pytest
from kvwall.app.demo.tinymodels import write_model
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import plan_memory
from kvwall.budget.memory.plan import fits_devices
from kvwall.budget.whatif import EXPERTS_ON_CPU, offload_table
from kvwall.monitors.gguf import read_model

GIB = 1 << 30
# The fields an offload row may change (its lever, and the context kept as -c).
LEVER_FIELDS = ("n_gpu_layers", "n_cpu_moe", "override_tensor", "kv_offload", "tensor_split", "n_ctx", "fit")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("offload")
    return {
        "moe": read_model(str(write_model("qwen3moe", root / "moe.gguf", n_layer=8, n_embd=256, n_expert=16,
                                          n_expert_used=2, n_ff_exp=256, n_ctx_train=8192))),
        "dense": read_model(str(write_model("llama", root / "dense.gguf", n_layer=8, n_embd=256, n_ff=1024,
                                            n_ctx_train=8192))),
        "mla": read_model(str(write_model("deepseek2", root / "mla.gguf", n_ctx_train=8192))),
    }


def setup(model, *flags, gpus=("CUDA0",), share=0.7):
    """The config, a GPU budget of ``share`` of what it needs all on the GPUs, and per-GPU free."""
    # -fitt 0: a tiny model is far smaller than --fit's default 1 GiB margin
    config = parse_command_line(["llama-server", "-m", model.path, "-fitt", "0", *flags])
    full = plan_memory(model, config.replace(fit=False), gpu_names=gpus)
    need = sum(d.total_bytes for d in full.devices if not d.is_host)
    free = {g: int(need * share / len(gpus)) for g in gpus}
    return config, sum(free.values()), free


def rows_for(model, config, budget, free, gpus=("CUDA0",)):
    return offload_table(model, config, memory_bytes=budget, gpu_names=gpus, device_free=free)


def check_rows(model, config, rows, budget, free, gpus=("CUDA0",)):
    """Every row's command re-parses to the config it claims, and frees what it says."""
    base = plan_memory(model, config, gpu_names=gpus, device_free=free)
    for row in rows:
        assert not row.refused, row.label
        again = parse_command_line(shlex.split(row.command))
        for name in LEVER_FIELDS:
            assert getattr(again, name) == getattr(row.config, name), (row.label, name)
        plan = plan_memory(model, again, gpu_names=gpus, device_free=free)
        assert plan.devices == row.plan.devices and plan.placement == row.plan.placement, row.label
        before = {d.name: d.total_bytes for d in base.devices}
        after = {d.name: d.total_bytes for d in plan.devices}
        assert dict(row.device_saves) == {n: before.get(n, 0) - after.get(n, 0) for n in {*before, *after}}
        assert row.saves_bytes == sum(b for n, b in row.device_saves if n != "Host")
        assert row.caveat and row.offload is not None
        if row.max_ctx and row.offload != "no-kv-offload":  # (-nkvo leaves --fit on: it may re-place)
            at_max = plan_memory(model, again.replace(n_ctx=row.max_ctx), gpu_names=gpus, device_free=free)
            assert fits_devices(at_max, budget, gpus, free), row.label
            cap = model.n_ctx_train * plan.n_seq
            step = 256 * plan.n_stream
            more = plan_memory(model, again.replace(n_ctx=row.max_ctx + step), gpu_names=gpus, device_free=free)
            assert row.max_ctx + step > cap or not fits_devices(more, budget, gpus, free), row.label


def test_moe_rows_reparse_and_free_what_they_say(tiny):
    m = tiny["moe"]
    config, budget, free = setup(m, "-c", "8192", "-np", "1")
    rows = rows_for(m, config, budget, free)
    labels = [r.label for r in rows]
    assert {r.offload for r in rows} == {"gpu-layers", "cpu-moe", "no-kv-offload"}
    assert "-ot exps=CPU" in labels and any(lab.startswith("-ncmoe ") for lab in labels)
    check_rows(m, config, rows, budget, free)


def test_the_ncmoe_row_is_the_fewest_expert_layers_that_let_the_asked_context_fit(tiny):
    m = tiny["moe"]
    config, budget, free = setup(m, "-c", "8192", "-np", "1")
    rows = [r for r in rows_for(m, config, budget, free) if r.label.startswith("-ncmoe ")]
    reaching = [r for r in rows if r.max_ctx >= 8192]
    assert reaching, [(r.label, r.max_ctx) for r in rows]
    need = min(r.config.n_cpu_moe for r in reaching)
    # one layer fewer does not fit the asked context: the row is the least that does
    fewer = plan_memory(m, config.replace(n_cpu_moe=need - 1, n_ctx=8192), gpu_names=("CUDA0",), device_free=free)
    assert not fits_devices(fewer, budget, ("CUDA0",), free)
    assert [r.config.n_cpu_moe for r in rows] == sorted(r.config.n_cpu_moe for r in rows)  # a few around it


def test_ot_exps_uses_llama_cpps_own_expert_regex_and_moves_every_expert(tiny):
    m = tiny["moe"]
    config, budget, free = setup(m, "-c", "8192", "-np", "1")
    ot = next(r for r in rows_for(m, config, budget, free) if r.label == "-ot exps=CPU")
    # common/common.h LLM_FFN_EXPS_REGEX, what --cpu-moe adds
    assert EXPERTS_ON_CPU == r"\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU"
    assert shlex.split(ot.command)[-2:] == ["-ot", EXPERTS_ON_CPU]
    assert ot.plan.placement.cpu_expert_layers == tuple(range(m.n_layer))
    cmoe = plan_memory(m, config.replace(cpu_moe=True, n_ctx=8192), gpu_names=("CUDA0",), device_free=free)
    assert ot.plan.devices == cmoe.devices  # the same bytes as --cpu-moe
    assert "experts of all" in ot.caveat and "host memory" in ot.caveat


def test_nkvo_moves_the_kv_cache_to_host_ram(tiny):
    m = tiny["dense"]
    config, budget, free = setup(m, "-c", "8192", "-np", "1", "-ngl", "99", share=2.0)
    rows = rows_for(m, config, budget, free)
    nkvo = next(r for r in rows if r.offload == "no-kv-offload")
    gpu = next(d for d in nkvo.plan.devices if d.name == "CUDA0")
    host = next(d for d in nkvo.plan.devices if d.is_host)
    assert gpu.kv_bytes == 0 and host.kv_bytes == nkvo.plan.kv_bytes > 0
    assert "-nkvo" in shlex.split(nkvo.command) and "PCIe" in nkvo.caveat
    check_rows(m, config, rows, budget, free)


def test_dense_layer_rows_around_what_fit_chose(tiny):
    m = tiny["dense"]
    config, budget, free = setup(m, "-c", "8192", "-np", "1")
    base = plan_memory(m, config, gpu_names=("CUDA0",), device_free=free)
    assert base.placement.fit == "layers" and 0 < base.placement.n_gpu_layers < m.n_layer_all + 1
    rows = rows_for(m, config, budget, free)
    ngl = [r.config.n_gpu_layers for r in rows if r.offload == "gpu-layers"]
    assert ngl == sorted(ngl, reverse=True) and 0 in ngl and base.placement.n_gpu_layers not in ngl
    fewer = [r for r in rows if r.offload == "gpu-layers" and r.config.n_gpu_layers < base.placement.n_gpu_layers]
    assert all(r.saves_bytes > 0 for r in fewer)  # fewer layers on the GPU free GPU memory
    assert all("layers on the CPU" in r.caveat and "host memory" in r.caveat for r in fewer)
    check_rows(m, config, rows, budget, free)


def test_a_plan_that_does_not_fit_gets_the_most_layers_that_fit(tiny):
    m = tiny["dense"]
    config, budget, free = setup(m, "-c", "8192", "-np", "1", "-ngl", "99")  # --fit gives up
    base = plan_memory(m, config, gpu_names=("CUDA0",), device_free=free)
    assert not fits_devices(base, budget, ("CUDA0",), free)
    rows = [r for r in rows_for(m, config, budget, free) if r.offload == "gpu-layers"]
    fitting = [r for r in rows if fits_devices(r.plan, budget, ("CUDA0",), free)]
    most = max(r.config.n_gpu_layers for r in fitting)
    one_more = plan_memory(m, config.replace(n_gpu_layers=most + 1, n_ctx=8192), gpu_names=("CUDA0",),
                           device_free=free)
    assert not fits_devices(one_more, budget, ("CUDA0",), free)


def test_two_gpus_get_tensor_split_rows_that_move_layers_between_them(tiny):
    m = tiny["dense"]
    gpus = ("CUDA0", "CUDA1")
    config, budget, free = setup(m, "-c", "8192", "-np", "1", "-ts", "3,1", gpus=gpus, share=1.5)
    rows = rows_for(m, config, budget, free, gpus)
    splits = [r for r in rows if r.offload == "tensor-split"]
    assert splits, [r.label for r in rows]
    by_free = [r for r in splits if r.config.tensor_split == tuple(round(free[g] / GIB, 1) for g in gpus)]
    assert by_free  # the command's -ts 3,1 against free memory split equally
    base = plan_memory(m, config, gpu_names=gpus, device_free=free)

    def gpu_weights(plan):
        return sum(d.weights_bytes for d in plan.devices if not d.is_host)

    for r in splits:  # the layers stay on GPUs: only which GPU holds them changes
        assert dict(r.plan.placement.layers).get("Host", 0) == 0
        assert gpu_weights(r.plan) == gpu_weights(base)
        assert dict(r.plan.placement.layers) != dict(base.placement.layers)
    check_rows(m, config, rows, budget, free, gpus)


def test_cpu_only_servers_have_no_offload_rows(tiny):
    m = tiny["moe"]
    config = parse_command_line(["llama-server", "-m", m.path, "-c", "4096"])
    assert offload_table(m, config, memory_bytes=GIB, gpu_names=()) == []


def test_mla_moe_rows_reparse(tiny):
    m = tiny["mla"]
    config, budget, free = setup(m, "-c", "4096", "-np", "1")
    rows = rows_for(m, config, budget, free)
    assert any(r.offload == "cpu-moe" for r in rows)
    check_rows(m, config, rows, budget, free)


# ---------------------------------------------------------------------------------------
# real shapes, header only


def test_a_70b_on_a_24_gib_gpu_starts_with_fit_and_fewer_layers_buy_context(shapes):
    m = shapes["70b"]
    config = parse_command_line(["llama-server", "-m", m.path, "-c", "32768"])
    free = {"CUDA0": 24 * GIB}
    base = plan_memory(m, config, gpu_names=("CUDA0",), device_free=free)
    assert base.placement.fit == "layers" and fits_devices(base, 24 * GIB, ("CUDA0",), free)
    rows = offload_table(m, config, memory_bytes=24 * GIB, gpu_names=("CUDA0",), device_free=free)
    fewer = [r for r in rows if r.offload == "gpu-layers" and 0 < r.config.n_gpu_layers < base.placement.n_gpu_layers]
    assert fewer and all(r.max_ctx > 32768 for r in fewer)
    assert next(r for r in rows if r.offload == "no-kv-offload").plan.placement.n_gpu_layers > base.placement.n_gpu_layers


def test_a_35b_moe_on_16_gib_gets_the_experts_that_let_64k_fit(shapes):
    m = shapes["moe"]
    config = parse_command_line(["llama-server", "-m", m.path, "-c", "65536", "-ngl", "99"])
    free = {"CUDA0": 16 * GIB}
    base = plan_memory(m, config, gpu_names=("CUDA0",), device_free=free)
    assert not fits_devices(base, 16 * GIB, ("CUDA0",), free)  # -ngl 99: --fit gives up
    rows = offload_table(m, config, memory_bytes=16 * GIB, gpu_names=("CUDA0",), device_free=free)
    reaching = [r for r in rows if r.label.startswith("-ncmoe ") and r.max_ctx >= 65536]
    assert reaching
    best = min(reaching, key=lambda r: r.config.n_cpu_moe)
    assert 0 < best.config.n_cpu_moe < m.n_layer and best.plan.placement.n_gpu_layers == m.n_layer_all + 1
    assert len(best.plan.placement.cpu_expert_layers) == best.config.n_cpu_moe


def test_the_gui_planner_page_lists_the_same_offload_rows(shapes):
    import html

    from kvwall.widgets.viewmodels.planner import plan_html

    m = shapes["70b"]
    page = plan_html(m.path, "-c 32768", 24 * GIB, gpu_names=("CUDA0",))
    assert page.error is None and "Offload" in page.html
    config = parse_command_line(["llama-server", "-m", m.path, "-c", "32768"])
    fitted = plan_memory(m, config, gpu_names=("CUDA0",), device_free={"CUDA0": 24 * GIB})
    assert fitted.placement.summary and html.escape(fitted.placement.summary) in page.html
    rows = offload_table(m, config, memory_bytes=24 * GIB, gpu_names=("CUDA0",), device_free={"CUDA0": 24 * GIB})
    for row in rows:
        assert html.escape(row.command) in page.html and html.escape(row.caveat) in page.html
    assert "Offload" not in plan_html(m.path, "-c 32768", 24 * GIB).html  # CPU-only: none


@pytest.mark.parametrize(("argv", "changes"), [
    (["--n-gpu-layers", "99"], {"n_gpu_layers": 31}),
    (["-ngl", "all"], {"n_gpu_layers": 0}),
    (["--n-cpu-moe", "3"], {"n_cpu_moe": 6}),
    (["--override-tensor", "a=CPU", "-ot", "b=CUDA0"], {"override_tensor": ("a=CPU", "b=CUDA0", EXPERTS_ON_CPU)}),
    (["--kv-offload"], {"kv_offload": False}),
    (["--tensor-split", "1/1"], {"tensor_split": (40.0, 41.0)}),
    ([], {"tensor_split": (22.5, 10.0), "n_gpu_layers": 64, "fit": False}),
])
def test_offload_edits_keep_the_users_spelling_and_reparse(argv, changes):
    config = parse_command_line(["llama-server", "-m", "m.gguf", *argv])
    command = config.command_line(**changes)
    again = parse_command_line(command)
    assert {k: getattr(again, k) for k in changes} == changes
    for flag in argv:  # a flag the user wrote is edited in place, not added twice
        if flag.startswith("--"):
            assert command.count(flag) <= 1
    assert len([w for w in command if w in ("-ot", "--override-tensor")]) <= 1
