"""``kvwall plan`` end to end on real GGUF files: text, JSON, exit codes, secrets, docs."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from kvwall.app.demo.tinymodels import write_model
from kvwall.app.headless.plan import EXIT_DOES_NOT_FIT, HELP, main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "json-schema.md"
MiB = 1 << 20


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan-models")
    return {
        "llama": write_model("llama", root / "llama.gguf", n_head_kv=2, head_k=32, head_v=32, n_embd=128, n_head=4),
        "deepseek2": write_model("deepseek2", root / "ds.gguf"),
        "gemma3": write_model("gemma3", root / "gemma3.gguf"),
    }


def run(*argv: str, environ: dict | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), environ=environ or {}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def run_json(*argv: str, environ: dict | None = None) -> tuple[int, dict]:
    code, out, err = run(*argv, "--json", environ=environ)
    assert err == ""
    return code, json.loads(out)


def test_json_plan_has_the_issue_fields_and_adds_up(models):
    code, obj = run_json(str(models["llama"]), "-c", "5000", "-np", "3", "--memory", "1G")
    assert code == 0 and obj["schema_version"] == 1 and obj["errors"] == []
    c, b = obj["config"], obj["budget"]
    # 5000 / 3 slots -> 1667 -> padded to 1792 per slot (llama.cpp rounds up), 5376 in total
    assert (c["n_ctx"], c["n_ctx_seq"], c["n_seq"], c["kv_unified"]) == (5376, 1792, 3, False)
    assert (c["cache_type_k"], c["cache_type_v"], c["flash_attn"]) == ("f16", "f16", "auto")
    # 2 layers x 5376 cells x (2 heads x 32) values x 2 bytes, for K and for V
    assert b["kv_k_bytes"] == b["kv_v_bytes"] == 2 * 5376 * 64 * 2
    assert b["kv_bytes"] == b["kv_k_bytes"] + b["kv_v_bytes"]
    parts = ("weights_bytes", "kv_bytes", "recurrent_bytes", "compute_bytes", "output_bytes")
    assert b["total_bytes"] == sum(b[k] for k in parts)
    assert [d["name"] for d in obj["devices"]] == ["Host"]
    for key in ("weights_bytes", "kv_bytes", "compute_bytes", "total_bytes"):
        assert sum(d[key] for d in obj["devices"]) == b[key]
    for key in (*parts, "total_bytes", "kv_k_bytes", "kv_v_bytes"):
        assert isinstance(b[key], int)
    assert obj["memory"]["budget_bytes"] == 1 << 30 and obj["memory"]["fits"] is True
    assert obj["what_if"][0]["label"] == "current" and obj["what_if"][0]["saves_bytes"] == 0


def test_every_json_field_is_documented(models):
    doc = DOCS.read_text()
    plan_doc = doc[doc.index("## `kvwall plan --json`") :]
    plan_doc = plan_doc[: plan_doc.index("\n## ", 10)] if "\n## " in plan_doc[10:] else plan_doc
    documented = set(re.findall(r"`([a-z_]+)`", plan_doc))
    _, obj = run_json(str(models["gemma3"]), "-c", "4096", "--memory", "1G")
    _, gpu = run_json(str(models["gemma3"]), "-c", "4096", "--gpus", "CUDA0", "--memory", "64M")
    assert gpu["offload"] and gpu["placement"]["layers"]

    def keys(value, seen):
        if isinstance(value, dict):
            for k, v in value.items():
                if k != "changes":  # ServerConfig field names, documented as such
                    seen.add(k)
                keys(v, seen)
        elif isinstance(value, list):
            for v in value:
                keys(v, seen)
        return seen

    missing = keys([obj, gpu], set()) - documented
    assert not missing, f"fields missing from docs/json-schema.md: {sorted(missing)}"


def _documented_tables() -> dict[str, set[str]]:
    """Section name -> the field names in the first column of its table."""
    doc = DOCS.read_text()
    plan_doc = doc[doc.index("## `kvwall plan --json`") : doc.index("## `kvwall status --json`")]
    tables: dict[str, set[str]] = {}
    for part in plan_doc.split("\n### ")[1:]:
        title = part.splitlines()[0].strip().strip("`").removesuffix("[]")
        rows = [line for line in part.splitlines() if line.startswith("| `")]
        tables[title] = {f for row in rows for f in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    return tables


def test_documented_tables_match_the_real_output_exactly(models):
    tables = _documented_tables()
    _, obj = run_json(str(models["gemma3"]), "-c", "4096", "--memory", "1G")
    assert tables["top level"] == set(obj)
    for section in ("model", "config", "memory", "budget"):
        assert tables[section] == set(obj[section]), section
    assert tables["devices"] == set(obj["devices"][0])
    assert all(tables["what_if"] == set(row) for row in obj["what_if"])
    assert tables["placement"] == set(obj["placement"])
    _, gpu = run_json(str(models["gemma3"]), "-c", "4096", "--gpus", "CUDA0", "--memory", "64M")
    assert gpu["offload"] and all(tables["what_if"] | tables["offload"] == set(r) for r in gpu["offload"])
    for section in ("budget", "devices"):  # byte fields are integers
        rows = obj[section] if isinstance(obj[section], list) else [obj[section]]
        assert all(isinstance(r[k], int) for r in rows for k in r if k.endswith("_bytes"))


def test_refused_configuration_exits_1_with_errors_and_no_budget(models):
    code, obj = run_json(str(models["llama"]), "-c", "2048", "-ctv", "q8_0", "-fa", "off", "--memory", "1G")
    assert code == 1
    assert obj["errors"] == ["quantized V cache requires flash_attn to be enabled"]
    assert obj["budget"] is None and obj["devices"] == [] and obj["what_if"] == []
    code, text, _ = run(str(models["deepseek2"]), "-ctk", "q8_0", "--memory", "1G")
    assert code == 1 and "does not support different K (q8_0) and V (f16)" in text


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["/nonexistent/model.gguf"], ["/nonexistent/model.gguf"]),
        (["{model}", "-ctk", "q3_k"], ["-ctk", "q3_k"]),
        (["{model}", "-np", "0"], ["-np"]),
        (["{model}", "-c", "many"], ["-c", "many"]),
        (["{model}", "--memory", "lots"], ["--memory", "lots"]),
        (["{model}", "--what-if-cache", "q2_k"], ["q2_k"]),
        ([], ["MODEL.gguf"]),
        (["--cmd", "llama-server -c 4096"], ["model"]),
        (["--cmd", "llama-server -m 'unclosed"], ["--cmd"]),
        (["{model}", "--frobnicate"], ["--frobnicate"]),  # llama-server: invalid argument
        (["--cmd", "llama-server -m {model} stray"], ["stray"]),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(models, argv, words):
    argv = [a.replace("{model}", str(models["llama"])) for a in argv]
    code, out, err = run(*argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("kvwall plan: ") and "Traceback" not in err
    for w in words:
        assert w in err


def test_broken_gguf_is_reported_not_raised(tmp_path, models):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(models["llama"].read_bytes()[:300])
    code, out, err = run(str(broken))
    assert code == 2 and out == "" and str(broken) in err and err.count("\n") == 1
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 10)
    code, _, err = run(str(garbage))
    assert code == 2 and str(garbage) in err


def test_cmd_form_and_environment_match_the_positional_form(models):
    m = str(models["llama"])
    _, a = run_json(m, "-c", "4096", "-np", "2", "-ctk", "q8_0", "--memory", "1G")
    _, b = run_json("--cmd", f"LLAMA_ARG_N_PARALLEL=2 llama serve --model={m} --ctx_size 4096 -ctk q8_0", "--memory", "1G")
    _, c = run_json(m, "--memory", "1G", environ={"LLAMA_ARG_CTX_SIZE": "4096", "LLAMA_ARG_N_PARALLEL": "2", "LLAMA_ARG_CACHE_TYPE_K": "q8_0"})
    assert a["budget"] == b["budget"] == c["budget"]
    assert a["config"] == b["config"] == c["config"]
    assert b["command"].startswith("LLAMA_ARG_N_PARALLEL=2 llama serve ")
    assert any("LLAMA_ARG_CTX_SIZE=4096" in x for x in c["assumptions"])


def test_api_key_never_appears_in_any_output(models):
    m = str(models["llama"])
    for argv in (
        [m, "--api-key", "sk-very-secret", "-c", "2048", "--memory", "1G"],
        ["--cmd", f"LLAMA_API_KEY=sk-very-secret llama-server -m {m} --api-key=sk-very-secret", "--memory", "1G"],
    ):
        for extra in ([], ["--json"]):
            code, out, err = run(*argv, *extra, environ={"LLAMA_API_KEY": "sk-very-secret"})
            assert code == 0 and "sk-very-secret" not in out + err
            assert "$LLAMA_API_KEY" in out


def test_what_if_rows_and_commands_reproduce_their_plans(models):
    m = str(models["gemma3"])
    code, obj = run_json(m, "-c", "4096", "-np", "2", "--what-if-cache", "q5_1,q8_0", "--memory", "64M")
    assert code == 0
    labels = [r["label"] for r in obj["what_if"]]
    assert labels == ["current", "1 slot", "q8_0 cache", "q8_0 cache, 1 slot", "q4_0 cache",
                      "q4_0 cache, 1 slot", "q5_1 cache", "q5_1 cache, 1 slot"]  # fmt: skip
    for row in obj["what_if"]:
        code2, again = run_json("--cmd", row["command"], "--memory", "64M")
        assert code2 == 0 and again["budget"]["kv_bytes"] == row["kv_bytes"], row["label"]
        assert row["max_ctx"] >= 4096 // 2 * row["n_seq"]
    q4 = obj["what_if"][4]
    assert q4["saves_bytes"] > obj["what_if"][2]["saves_bytes"] > 0


def test_text_output_names_the_budget_assumptions_and_what_ifs(models):
    code, text, err = run(str(models["llama"]), "--memory", "2G")
    assert code == 0 and err == ""
    for words in ("context: 4 slots sharing one pool of 4096 cells", "KV cache", "budget: 2.00 GiB",
                  "-np not given", "-c not given", "what if", "q8_0 cache", "trade-offs"):  # fmt: skip
        assert words in text, words
    assert "llama-server -m " in text


def test_memory_that_does_not_fit_is_said_plainly(models):
    code, text, _ = run(str(models["llama"]), "-c", "4096", "--memory", "1M")
    # Issue 9: "does not fit" has its own exit code (3).
    assert code == EXIT_DOES_NOT_FIT and "DOES NOT FIT" in text and "none fits" in text
    assert "no what-if fits" in text


def test_plan_that_does_not_fit_exits_3_and_offers_commands_that_fit(models):
    m = str(models["llama"])
    code, obj = run_json(m, "-c", "4096", "-np", "2", "--memory", "6.2M")
    assert code == EXIT_DOES_NOT_FIT and obj["memory"]["fits"] is False
    fitting = [r for r in obj["what_if"] if r["fits"]]
    assert fitting, "no row fits 6.2 MiB: pick a bigger budget for this test"
    for row in fitting:  # each command offered, planned again, fits
        again_code, again = run_json("--cmd", row["command"], "--memory", "6.2M")
        assert again_code == 0 and again["memory"]["fits"], row["label"]
    assert obj["fit_command"] is not None
    assert run_json("--cmd", obj["fit_command"], "--memory", "6.2M")[0] == 0
    code, text, _ = run(m, "-c", "4096", "-np", "2", "--memory", "6.2M")
    assert code == EXIT_DOES_NOT_FIT and "commands that fit" in text
    for row in fitting:
        assert row["command"] in text


def test_trailing_text_in_a_number_is_a_warning_at_the_top_and_the_table_agrees(models):
    m = str(models["llama"])
    code, text, _ = run(m, "-c", "8k", "--memory", "1G")
    assert code == 0
    head = text[: text.index("context:")]
    assert "WARNING: -c 8k: llama-server reads this as 8" in head
    code, obj = run_json(m, "-c", "8k", "--memory", "1G")
    assert obj["warnings"] and "-c 8k" in obj["warnings"][0]
    current = obj["what_if"][0]
    assert current["label"] == "current" and current["saves_bytes"] == 0
    assert current["total_bytes"] == obj["budget"]["total_bytes"]
    for row in obj["what_if"][1:]:  # fewer slots of the same pool never cost more
        if "n_parallel" in row["changes"] and row["cache_type_v"] == "f16":
            assert row["saves_bytes"] >= 0, row
    assert "-" + "2." not in text.split("what if")[1]  # no "saves -2.9 MiB"


def test_big_budgets_keep_columns_apart(models):
    code, text, _ = run(str(models["llama"]), "--memory", "80000M")
    assert code == 0
    table = text[text.index("what if"):text.index("commands")]
    assert "GiB" in text and not re.search(r"(MiB|GiB|KiB)\d", text)
    assert not re.search(r"\d{5}\.\d\d MiB", table)


def test_json_errors_are_json_with_json(models):
    code, out, err = run("/nonexistent/model.gguf", "--json")
    assert code == 2 and err.startswith("kvwall plan: ")
    obj = json.loads(out)
    assert obj == {"schema_version": 1, "error": err[len("kvwall plan: "):].strip(),
                   "exit_code": 2}
    code, out, _ = run(str(models["llama"]), "--memory", "lots", "--json")
    assert code == 2 and json.loads(out)["exit_code"] == 2


def test_help_documents_exit_code_3():
    code, out, _ = run("--help")
    assert code == 0 and "3 plan printed, it does not fit" in out


def test_help_lists_every_option_and_exits_0(models):
    code, out, _ = run("--help")
    assert code == 0 and out == HELP
    for option in ("--cmd", "--memory", "--gpus", "--what-if-cache", "--json", "exit status"):
        assert option in HELP


def test_plan_for_a_gpu_from_a_cpu_machine(models):
    code, obj = run_json(str(models["llama"]), "-c", "4096", "-np", "1", "--gpus", "CUDA0", "--memory", "2G")
    assert code == 0
    rows = {d["name"]: d for d in obj["devices"]}
    assert set(rows) == {"CUDA0", "Host"} and rows["CUDA0"]["kv_bytes"] == obj["budget"]["kv_bytes"]
    assert rows["Host"]["weights_bytes"] > 0  # the input embedding stays on the CPU
    _, obj = run_json(str(models["llama"]), "-c", "4096", "--gpus", "CUDA0")  # budget probed here
    unknown = "GPU memory unknown" in obj["memory"]["source"]  # no such GPU on this machine
    assert unknown == any("free GPU memory unknown" in a and "--memory" in a for a in obj["assumptions"])


def test_kvwall_plan_runs_as_a_command_without_qt(models):
    code = (
        "import sys; from kvwall.app.cli import main; "
        "r = main(['plan', sys.argv[1], '--memory', '1G']); "
        "assert not any(m.startswith(('PySide6', 'pyqtgraph')) for m in sys.modules); sys.exit(r)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(models["llama"])], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "what if" in done.stdout and done.stderr == ""


def test_split_model_is_planned_from_its_first_shard_and_refused_from_another(tmp_path):
    from test_gguf import llama_tensors, minimal_kv, write

    tensors = llama_tensors(n_layer=3, n_embd=128, n_ff=256, n_vocab=200, n_kv=32)
    paths = write(tmp_path, "llama", minimal_kv(n_layer=3, n_embd=128), tensors, split_max_tensors=10)
    code, obj = run_json(str(paths[0]), "-c", "1024", "--memory", "1G")
    assert code == 0 and obj["budget"]["weights_bytes"] == sum(t.n_bytes for t in tensors)
    # llama-server: "illegal split file idx: 1 ..., model must be loaded with the first split"
    code, out, err = run(str(paths[1]), "-c", "1024", "--memory", "1G")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert str(paths[1]) in err and f"-m {paths[0]}" in err


def test_big_endian_gguf_is_refused_like_llama_server_on_a_little_endian_host(tmp_path):
    import numpy as np
    from gguf import GGUFEndian, GGUFWriter

    path = tmp_path / "be.gguf"
    w = GGUFWriter(str(path), "llama", endianess=GGUFEndian.BIG)
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_tensor("token_embd.weight", np.zeros((10, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    code, out, err = run(str(path), "--memory", "1G")
    if sys.byteorder == "little":  # llama-server: "... mismatch between the host and model endianness?"
        assert code == 2 and out == "" and "big-endian" in err and err.count("\n") == 1
    else:
        assert code == 0


# ---------------------------------------------------------------- devices


def test_memory_devices_table_matches_the_real_output_exactly(models):
    tables = _documented_tables()
    _, obj = run_json(str(models["llama"]), "-c", "4096", "--gpus", "CUDA0", "--memory", "1G")
    (row,) = obj["memory"]["devices"]
    assert tables["memory.devices"] == set(row)
    assert row == {"name": "CUDA0", "description": None, "total_bytes": None,
                   "free_bytes": 1 << 30, "source": "--memory"}


def test_memory_per_device_plans_for_those_devices(models):
    # more than --fit's default 1 GiB margin on each device, so the layers stay there
    code, obj = run_json(str(models["llama"]), "-c", "4096", "--memory", "CUDA0=3G,CUDA1=1536M")
    assert code == 0
    mem = obj["memory"]
    assert mem["gpu_names"] == ["CUDA0", "CUDA1"] and mem["budget_bytes"] == 4608 * MiB
    assert [(d["name"], d["free_bytes"]) for d in mem["devices"]] == [("CUDA0", 3 << 30), ("CUDA1", 1536 * MiB)]
    assert {d["name"] for d in obj["devices"]} == {"CUDA0", "CUDA1", "Host"}
    _, obj = run_json(str(models["llama"]), "-c", "4096", "--gpus", "CUDA1,CUDA0", "--memory", "CUDA0=1G")
    assert [(d["name"], d["free_bytes"]) for d in obj["memory"]["devices"]] == [("CUDA1", None), ("CUDA0", 1 << 30)]


def test_one_memory_size_is_split_over_several_devices(models):
    _, obj = run_json(str(models["llama"]), "-c", "4096", "--gpus", "CUDA0,CUDA1", "--memory", "3G")
    assert obj["memory"]["budget_bytes"] == 3 << 30
    assert [d["free_bytes"] for d in obj["memory"]["devices"]] == [3 << 29, 3 << 29]
    assert "--memory shared by CUDA0 1.50 GiB, CUDA1 1.50 GiB" in " ".join(obj["assumptions"])
    _, obj = run_json(str(models["llama"]), "-c", "4096", "--memory", "CUDA0=1G,CUDA1=2G")
    assert not any("shared by" in a for a in obj["assumptions"])


@pytest.mark.parametrize(("memory", "gpus", "words"), [
    ("CUDA0=lots", None, ["lots"]),
    ("CUDA0=1G,CUDA0=2G", None, ["CUDA0", "twice"]),
    ("CUDA1=1G", "CUDA0", ["CUDA1", "--gpus"]),
    ("host=1G", None, ["host=1G"]),
    ("=1G", None, ["DEVICE=SIZE"]),
    ("CUDA0=0", None, ["more than 0"]),
    ("1G", "CUDA0;rm", ["--gpus", "CUDA0;rm"]),
])
def test_bad_per_device_memory_or_gpus_is_exit_2(models, memory, gpus, words):
    argv = [str(models["llama"]), "--memory", memory] + (["--gpus", gpus] if gpus else [])
    code, out, err = run(*argv)
    assert code == 2 and out == "" and err.count("\n") == 1
    for w in words:
        assert w in err


def fake_llama_server(tmp_path, listing: str, *, name: str = "llama-server", exit_code: int = 0) -> str:
    """A shell script standing in for a llama-server build; counts its runs in ``runs``."""
    (tmp_path / "listing.txt").write_text(listing)
    exe = tmp_path / "bin" / name
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(
        f'#!/bin/sh\necho "$1" >> "{tmp_path}/runs"\n'
        # like ggml-vulkan with lavapipe: its devices only when GGML_VK_VISIBLE_DEVICES names them
        f'case "$1" in --list-devices) [ "$GGML_VK_VISIBLE_DEVICES" = 0,0 ] && cat "{tmp_path}/listing.txt" '
        '|| printf "Available devices:\n  (none)\n";; '
        '--version) echo "version: 0.1.0-dev (build 1, commit 7e4c0a9)" >&2;; esac\n'
        f"exit {exit_code}\n")
    exe.chmod(0o755)
    return str(exe)


TWO_DEVICES = ("Available devices:\n  Vulkan0: llvmpipe (2048 MiB, 2000 MiB free)\n"
               "  Vulkan1: llvmpipe (2048 MiB, 1000 MiB free)\n")


@pytest.mark.skipif(sys.platform == "win32", reason="the fake binary is a sh script")
def test_cmd_binary_is_asked_for_its_devices_once(models, tmp_path):
    exe = fake_llama_server(tmp_path, TWO_DEVICES)
    cmd = f"GGML_VK_VISIBLE_DEVICES=0,0 {exe} -m {models['llama']} -c 4096 -np 1"
    code, obj = run_json("--cmd", cmd)
    mem = obj["memory"]
    assert code == 0 and mem["gpu_names"] == ["Vulkan0", "Vulkan1"] and mem["device_error"] is None
    assert mem["budget_bytes"] == 3000 * MiB and mem["build_number"] == 10434 and mem["binary"] == exe
    assert [d["free_bytes"] for d in mem["devices"]] == [2000 * MiB, 1000 * MiB]
    assert mem["source"] == "free GPU memory (Vulkan0, Vulkan1: llama-server --list-devices)"
    assert any("with GGML_VK_VISIBLE_DEVICES=0,0" in a and "b10434" in a for a in obj["assumptions"])
    assert {d["name"] for d in obj["devices"]} == {"Vulkan0", "Vulkan1", "Host"}
    before = (tmp_path / "runs").read_text()
    _, again = run_json("--cmd", cmd)
    assert (tmp_path / "runs").read_text() == before, "the cached answer ran the binary"
    assert "cached" in again["memory"]["source"] and again["memory"]["gpu_names"] == ["Vulkan0", "Vulkan1"]
    # --gpus and --memory override what the binary says; the build is still the binary's
    _, over = run_json("--cmd", cmd, "--gpus", "Vulkan1", "--memory", "Vulkan1=512M")
    assert over["memory"]["gpu_names"] == ["Vulkan1"] and over["memory"]["budget_bytes"] == 512 * MiB
    assert over["memory"]["devices"][0]["total_bytes"] == 2048 * MiB
    assert over["memory"]["build_number"] == 10434


@pytest.mark.skipif(sys.platform == "win32", reason="the fake binary is a sh script")
def test_cmd_binary_on_path_is_found_with_the_commands_path(models, tmp_path):
    exe = fake_llama_server(tmp_path, TWO_DEVICES, name="llama-server-vulkan")
    path = os.pathsep.join((os.path.dirname(exe), "/usr/bin", "/bin"))
    _, obj = run_json("--cmd", f"GGML_VK_VISIBLE_DEVICES=0,0 llama-server-vulkan -m {models['llama']} -c 4096",
                      environ={"PATH": path})
    assert obj["memory"]["gpu_names"] == ["Vulkan0", "Vulkan1"]
    _, obj = run_json("--cmd", f"llama-server-vulkan -m {models['llama']} -c 4096", environ={"PATH": path})
    assert obj["memory"]["gpu_names"] == [] and obj["memory"]["device_error"] is None


@pytest.mark.skipif(sys.platform == "win32", reason="the fake binary is a sh script")
def test_a_cpu_build_plans_cpu_only_and_a_broken_one_falls_back(models, tmp_path):
    cpu = fake_llama_server(tmp_path, "Available devices:\n  (none)\n", name="llama-cpu")
    code, obj = run_json("--cmd", f"{cpu} -m {models['llama']} -c 4096")
    assert code == 0 and obj["memory"]["gpu_names"] == [] and obj["memory"]["device_error"] is None
    assert [d["name"] for d in obj["devices"]] == ["Host"]
    broken = fake_llama_server(tmp_path, "\x1b[2Jnot a list", name="llama-broken", exit_code=1)
    code, text, err = run("--cmd", f"{broken} -m {models['llama']} -c 4096")
    assert code in (0, 3) and err == "" and "\x1b" not in text
    assert "llama-broken --list-devices failed (exit status 1)" in text
    _, obj = run_json("--cmd", f"/nonexistent/llama-server -m {models['llama']} -c 4096")
    assert obj["memory"]["device_error"] == "llama-server not found"
    assert any("llama-server not found: devices from kvwall's monitors" in a for a in obj["assumptions"])


def test_each_devices_free_memory_reaches_the_layer_split(tmp_path):
    model = write_model("llama", tmp_path / "eight.gguf", n_layer=8)

    def kv_on(memory: str) -> dict[str, int]:
        _, obj = run_json(str(model), "-c", "4096", "-np", "1", "--memory", memory)
        return {d["name"]: d["kv_bytes"] for d in obj["devices"] if not d["is_host"]}

    even, lopsided = kv_on("Vulkan0=3G,Vulkan1=3G"), kv_on("Vulkan0=4G,Vulkan1=2G")
    assert sum(even.values()) == sum(lopsided.values())
    assert lopsided["Vulkan0"] > even["Vulkan0"] and lopsided["Vulkan1"] < even["Vulkan1"]
