"""``kvwall status`` on a live Vulkan llama-server whose ``--fit`` moved layers to the CPU:
the placement is rebuilt from the command line and the fit replayed with the device memory
the server saw, so the per-device rows are what the server allocated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from oracles.llamalog import parse_load_log

MiB = 1 << 20
BIG = {"n_layer": 8, "n_embd": 512, "n_ff": 2048, "n_head": 8, "n_head_kv": 4,
       "n_ctx_train": 32768, "n_vocab": 2000}  # fmt: skip


def _status(url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    done = subprocess.run([sys.executable, "-m", "kvwall.app", "status", "--json", "--no-history"],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_rebuilds_a_partial_fit_per_device(vulkan_server, tiny_model):
    path = tiny_model("llama", **BIG)
    server = vulkan_server(path, "-fitt", "1900", "-c", "16384", "-np", "1", devices="0")
    log = parse_load_log(server.log_text())
    assert log.offloaded_layers is not None and 0 < log.offloaded_layers < BIG["n_layer"] + 1
    report = _status(server.url)
    (mine,) = [s for s in report["servers"] if s["pid"] == server.pid]
    plan = mine["plan"]
    assert plan is not None, mine["notes"]
    placement = plan["placement"]
    assert placement["fit"] == "layers"
    assert placement["n_gpu_layers"] == log.offloaded_layers
    assert f"{log.offloaded_layers} layers on Vulkan0" in placement["summary"]
    logged = log.by_device
    rows = {d["name"]: d for d in plan["devices"]}
    assert set(rows) == set(logged)
    for name, got in logged.items():
        assert rows[name]["weights_bytes"] / MiB == pytest.approx(got.model_mib, abs=0.011), name
        assert rows[name]["kv_bytes"] / MiB == pytest.approx(got.kv_mib, abs=0.011), name
