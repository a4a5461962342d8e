"""An MLA model's compute buffer under flash attention does not depend on the KV cache type.

The README's table (benchmarks/seed_numbers.py) says kvwall predicts no compute-buffer
change from f16 to q8_0 for DeepSeek under flash attention, and that the CPU build of
llama.cpp agrees. This is that check, on the tiny MLA model: the real server's logged
compute buffer and kvwall's plan, for both cache types, while the KV cache shrinks.
"""

from __future__ import annotations

import psutil
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import plan_memory
from kvwall.monitors.gguf import read_model
from oracles.llamalog import parse_load_log

MiB = 1 << 20


def _logged_and_planned(llama_server, path, cache_type: str):
    args = ("-c", "8192", "-np", "1", "-fa", "on", "-ctk", cache_type, "-ctv", cache_type)
    server = llama_server(path, *args)
    log = parse_load_log(server.log_text())
    server.stop()
    config = parse_command_line(["llama-server", "-m", str(path), *args])
    plan = plan_memory(read_model(str(path)), config, free_bytes=psutil.virtual_memory().total)
    assert plan.ok and log.loaded, plan.errors
    return log, plan


def test_q8_0_cache_shrinks_the_kv_not_the_compute_buffer(llama_server, tiny_model):
    path = tiny_model("deepseek2")
    log_f16, plan_f16 = _logged_and_planned(llama_server, path, "f16")
    log_q8, plan_q8 = _logged_and_planned(llama_server, path, "q8_0")
    assert log_q8.kv_total_mib < 0.6 * log_f16.kv_total_mib  # 34/64 of f16
    assert plan_q8.kv_bytes < 0.6 * plan_f16.kv_bytes
    assert log_q8.compute_total_mib == log_f16.compute_total_mib > 0
    assert plan_q8.compute_bytes == plan_f16.compute_bytes
