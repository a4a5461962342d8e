"""``kvwall plan`` for GPU users (issue 8): the placement --fit chooses, no "DOES NOT FIT"
for a command --fit starts, per-GPU fits, and the offload rows whose commands fit again."""

from __future__ import annotations

import io
import json
import shlex

import pytest
from kvwall.app.demo.realshapes import write_header
from kvwall.app.demo.tinymodels import write_model
from kvwall.app.headless.plan import EXIT_DOES_NOT_FIT, EXIT_OK, main
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import plan_memory
from kvwall.monitors.gguf import read_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Llama-3.1-70B and Qwen3.6-35B-A3B at Q4_K_M, header only (removed afterwards: they
    claim tens of GB, sparse), and a tiny llama."""
    root = tmp_path_factory.mktemp("cli-offload")
    yield {
        "70b": str(write_header("llama-3.1-70b", root / "llama-70b.gguf")),
        "moe": str(write_header("qwen3.6-35b-a3b", root / "qwen3.6-35b-a3b.gguf")),
        "tiny": str(write_model("llama", root / "tiny.gguf", n_layer=8, n_embd=256, n_ff=1024)),
    }
    for path in root.glob("*.gguf"):
        path.unlink()


def run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), environ={}, out=out, err=err)
    assert err.getvalue() == ""
    return code, out.getvalue()


def run_json(*argv: str) -> tuple[int, dict]:
    code, out = run(*argv, "--json")
    return code, json.loads(out)


def test_a_70b_that_fit_starts_on_24_gib_is_not_called_does_not_fit(models):
    argv = (models["70b"], "--gpus", "CUDA0", "--memory", "24G", "-c", "32768")
    code, text = run(*argv)
    assert code == EXIT_OK and "DOES NOT FIT" not in text
    assert "fits as --fit places it" in text
    model = read_model(models["70b"])
    fitted = plan_memory(model, parse_command_line(["llama-server", "-m", models["70b"], "-c", "32768"]),
                         gpu_names=("CUDA0",), device_free={"CUDA0": 24 << 30})
    n_gpu = fitted.placement.n_gpu_layers
    assert f"placement: llama-server will start with {n_gpu} layers on CUDA0, {81 - n_gpu} on the CPU, -c 32768" in text
    table = text[text.index("offload ("):]
    step = round(81 / 10)  # rows a tenth of the layers either side of what --fit chose
    assert f"-ngl {n_gpu - step} " in table and f"-ngl {n_gpu + step} " in table and "-nkvo" in table
    assert "layers on the CPU" in table and "PCIe" in table
    _, obj = run_json(*argv)
    p = obj["placement"]
    assert p["fit"] == "layers"
    assert p["layers"] == [{"device": "CUDA0", "n_layers": n_gpu}, {"device": "Host", "n_layers": 81 - n_gpu}]
    pinned = parse_command_line(shlex.split(p["pinned_command"]))
    assert pinned.n_gpu_layers == p["pinned"]["n_gpu_layers"] == n_gpu and not pinned.fit
    again = plan_memory(model, pinned, gpu_names=("CUDA0",), device_free={"CUDA0": 24 << 30})
    assert [(d.name, d.total_bytes) for d in again.devices] == [(d["name"], d["total_bytes"]) for d in obj["devices"]]
    assert all(r["lever"] for r in obj["offload"])


def test_ngl_99_does_not_fit_and_the_offload_rows_that_fit_do(models):
    argv = (models["70b"], "--gpus", "CUDA0", "--memory", "24G", "-c", "32768", "-ngl", "99")
    code, obj = run_json(*argv)
    assert code == EXIT_DOES_NOT_FIT and obj["placement"]["fit"] == "failed"
    fitting = [r for r in obj["offload"] if r["fits"]]
    assert fitting and all(r["lever"] == "gpu-layers" for r in fitting)
    for r in fitting:
        again, plan = run_json("--cmd", r["command"], "--gpus", "CUDA0", "--memory", "24G")
        assert again == EXIT_OK and plan["placement"]["n_gpu_layers"] == r["n_gpu_layers"], r["label"]
    code, text = run(*argv)
    assert "DOES NOT FIT" in text and "the offload rows marked * below do" in text
    for r in fitting:
        assert r["command"] in text


def test_a_35b_moe_on_16_gib_gets_an_experts_row_for_its_64k(models):
    code, obj = run_json(models["moe"], "--gpus", "CUDA0", "--memory", "16G", "-c", "65536", "-ngl", "99")
    assert code == EXIT_DOES_NOT_FIT
    experts = [r for r in obj["offload"] if r["label"].startswith("-ncmoe ") and r["fits"]]
    assert experts and experts[0]["max_ctx"] >= 65536
    n = int(experts[0]["label"].split()[1])
    assert experts[0]["cpu_expert_layers"] == list(range(n))
    assert run_json("--cmd", experts[0]["command"], "--gpus", "CUDA0", "--memory", "16G")[0] == EXIT_OK
    ot = next(r for r in obj["offload"] if r["label"] == "-ot exps=CPU")
    n_layer = read_model(models["moe"]).n_layer
    assert ot["cpu_expert_layers"] == list(range(n_layer)) and ot["saves_bytes"] > experts[0]["saves_bytes"]


def test_each_gpu_must_fit_in_its_own_free_memory(models):
    m = models["tiny"]
    model = read_model(m)
    need = plan_memory(model, parse_command_line(["llama-server", "-m", m, "-c", "4096", "-ngl", "99", "-fit", "off"]),
                       gpu_names=("CUDA0", "CUDA1"))
    gpu_total = sum(d.total_bytes for d in need.devices if not d.is_host)
    budget = f"{int(gpu_total * 1.3)}B"  # plenty in total, split in two equal halves
    code, obj = run_json(m, "--gpus", "CUDA0,CUDA1", "--memory", budget, "-c", "4096", "-ngl", "99", "-ts", "9,1")
    assert obj["memory"]["used_bytes"] <= obj["memory"]["budget_bytes"]  # it fits in total...
    assert code == EXIT_DOES_NOT_FIT and obj["memory"]["fits"] is False  # ...not on CUDA0
    code, obj = run_json(m, "--gpus", "CUDA0,CUDA1", "--memory", budget, "-c", "4096", "-ngl", "99")
    assert code == EXIT_OK and obj["memory"]["fits"] is True  # split by free memory: it fits


def test_cmd_environment_is_repeated_in_front_of_offload_commands(models):
    code, obj = run_json("--cmd", f"CUDA_VISIBLE_DEVICES=0 llama-server -m {models['70b']} -c 32768",
                         "--gpus", "CUDA0", "--memory", "24G")
    assert code == EXIT_OK and obj["offload"]
    assert all(r["command"].startswith("CUDA_VISIBLE_DEVICES=0 llama-server ") for r in obj["offload"])
    assert obj["placement"]["pinned_command"].startswith("CUDA_VISIBLE_DEVICES=0 llama-server ")


def test_cpu_only_plans_have_no_offload_rows(models):
    code, obj = run_json(models["tiny"], "-c", "4096", "--memory", "1G")
    assert code == EXIT_OK and obj["offload"] == [] and obj["placement"]["fit"] != "layers"
    assert "offload (" not in run(models["tiny"], "-c", "4096", "--memory", "1G")[1]
