"""The README's "numbers behind the memory wall" are what benchmarks/seed_numbers.py computes.

The script plans header-only models of real shapes with kvwall's memory model; when the
model changes, this test fails until the README is regenerated
(``python benchmarks/seed_numbers.py --readme README.md``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "seed_numbers.py"
sys.path.insert(0, str(SCRIPT.parent))
import seed_numbers  # noqa: E402


@pytest.fixture(scope="module")
def figures() -> seed_numbers.Figures:
    # the headers claim 470 GB between them: gone with the folder, not left in pytest's tmp
    with tempfile.TemporaryDirectory() as tmp:
        return seed_numbers.figures(Path(tmp))


def test_readme_section_is_what_the_model_computes(figures):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert seed_numbers.BEGIN in readme and seed_numbers.END in readme
    assert seed_numbers.readme_section(readme) == seed_numbers.markdown(figures), (
        "README.md's numbers are stale: run python benchmarks/seed_numbers.py --readme README.md"
    )


def test_the_seeds_figures_come_out_of_the_plans(figures):
    d, q, m = figures.dense_70b, figures.moe_16gb, figures.mla
    # Llama-3.1-70B: 80 layers x 8 KV heads x 128 x (K + V) x f16 a token
    assert d.kv_per_token_f16 == 80 * 8 * 128 * 2 * 2
    assert d.kv_128k_bytes == 131072 * d.kv_per_token_f16
    assert d.kv_per_token_q8_0 * 32 == d.kv_per_token_f16 // 2 * 34  # 34 bytes a 32-value block
    # the whole plan keeps compute buffers too: fewer tokens than KV-only arithmetic
    assert 0 < d.plan_tokens_f16 < d.kv_only_tokens_f16
    assert d.plan_tokens_q8_0_one_slot == d.n_ctx_train < d.plan_tokens_q8_0_two_slots
    assert d.plan_tokens_q8_0_two_slots < d.kv_only_tokens_q8_0
    assert d.agents_kv_bytes == 4 * d.kv_128k_bytes > seed_numbers.H200
    assert d.h200_tokens_per_agent_f16 < d.h200_tokens_per_agent_q8_0
    # the MoE: it does not fit without offload; every expert on the CPU leaves the GPU far
    # under 16 GiB, and --fit keeps as many on it as fit with the trained context
    assert q.gpu_bytes_no_offload > seed_numbers.GPU_16GB
    assert q.all_experts_cpu.cpu_expert_layers == q.n_layer
    assert q.all_experts_cpu.gpu_bytes < q.full_context.gpu_bytes <= seed_numbers.GPU_16GB
    # the host's mmap'd range spans the file either way (llama.cpp maps first..last host tensor)
    assert q.full_context.host_bytes <= q.all_experts_cpu.host_bytes
    assert 0 < q.full_context.cpu_expert_layers < q.n_layer
    assert q.all_experts_cpu.n_ctx == q.full_context.n_ctx == q.n_ctx_train
    # with no -c, --fit gives up context before it moves any expert
    assert q.defaults.n_ctx < q.n_ctx_train and q.defaults.cpu_expert_layers < q.full_context.cpu_expert_layers
    # DeepSeek: q8_0 halves (about) the KV cache and leaves the modelled compute buffers
    assert m.kv_q8_0_bytes < m.kv_f16_bytes
    assert (m.gpu_compute_f16, m.host_compute_f16) == (m.gpu_compute_q8_0, m.host_compute_q8_0)


def test_the_script_rewrites_a_stale_readme_and_prints_json(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\n\n{seed_numbers.BEGIN}\n| stale |\n{seed_numbers.END}\n\nafter\n", encoding="utf-8"
    )
    run = [sys.executable, str(SCRIPT), "--readme", str(readme)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "updated" in first.stdout
    text = readme.read_text(encoding="utf-8")
    assert "| stale |" not in text and text.startswith("# x\n") and text.endswith("\n\nafter\n")
    assert "Llama-3.1-70B Q4_K_M" in seed_numbers.readme_section(text)
    second = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert "already up to date" in second.stdout
    done = subprocess.run([sys.executable, str(SCRIPT), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    obj = json.loads(done.stdout)
    assert obj["dense_70b"]["kv_128k_bytes"] == 131072 * obj["dense_70b"]["kv_per_token_f16"]
    assert set(obj) == {"dense_70b", "moe_16gb", "mla"}


def test_a_readme_without_the_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no section here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="needs one"):
        seed_numbers.update_readme(readme, "body\n")
    assert readme.read_text(encoding="utf-8") == "# no section here\n"
