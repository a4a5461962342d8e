"""Header-only GGUF files of two real shapes, for the offload tests (weights are a hole).

A Llama-3.1-70B-shaped dense model (80 layers, 8 KV heads of 128, vocabulary 128256) and
a Qwen3-30B-A3B-shaped MoE (48 layers, 128 experts of which 8 are used, 4 KV heads), all
matrices Q4_K and the embeddings Q6_K, as a 4-bit download roughly is: about 40 GiB and
17 GiB of weights. Only the sizes matter to kvwall: it never reads tensor data.
"""

from __future__ import annotations

from pathlib import Path

import gguf
from gguf_builders import Tensor, llama_tensors, write_gguf

GT = gguf.GGMLQuantizationType


def write_llama_70b(path: Path) -> Path:
    """Llama-3.1-70B's table (meta-llama's config.json), Q4_K matrices."""
    n_layer, n_embd, n_ff, n_vocab, n_head, n_head_kv = 80, 8192, 28672, 128256, 64, 8
    tensors = llama_tensors(n_layer, n_embd, n_ff, n_vocab, n_head_kv * 128, GT.Q4_K)
    tensors = [Tensor(t.name, t.shape, GT.Q6_K) if t.name == "output.weight" else t for t in tensors]
    kv = {
        "general.name": "Llama-3.1-70B-shaped",
        "{arch}.context_length": 131072,
        "{arch}.embedding_length": n_embd,
        "{arch}.block_count": n_layer,
        "{arch}.feed_forward_length": n_ff,
        "{arch}.attention.head_count": n_head,
        "{arch}.attention.head_count_kv": n_head_kv,
        "{arch}.rope.dimension_count": 128,
        "{arch}.vocab_size": n_vocab,
    }
    return write_gguf(path, "llama", kv, tensors)[0]


def _moe_layer(il: int, n_embd: int, n_head: int, n_head_kv: int, n_expert: int, n_ff_exp: int) -> list[Tensor]:
    b, head = f"blk.{il}", 128
    return [
        Tensor(f"{b}.attn_norm.weight", (n_embd,), GT.F32),
        Tensor(f"{b}.attn_q.weight", (n_embd, n_head * head), GT.Q4_K),
        Tensor(f"{b}.attn_k.weight", (n_embd, n_head_kv * head), GT.Q4_K),
        Tensor(f"{b}.attn_v.weight", (n_embd, n_head_kv * head), GT.Q6_K),
        Tensor(f"{b}.attn_output.weight", (n_head * head, n_embd), GT.Q4_K),
        Tensor(f"{b}.attn_q_norm.weight", (head,), GT.F32),
        Tensor(f"{b}.attn_k_norm.weight", (head,), GT.F32),
        Tensor(f"{b}.ffn_norm.weight", (n_embd,), GT.F32),
        Tensor(f"{b}.ffn_gate_inp.weight", (n_embd, n_expert), GT.F32),
        Tensor(f"{b}.ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert), GT.Q4_K),
        Tensor(f"{b}.ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert), GT.Q4_K),
        Tensor(f"{b}.ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert), GT.Q6_K),
    ]


def write_qwen3_30b_a3b(path: Path) -> Path:
    """Qwen3-30B-A3B's table (Qwen's config.json): 128 experts, 8 used, 768 wide."""
    n_layer, n_embd, n_vocab, n_head, n_head_kv, n_expert, n_ff_exp = 48, 2048, 151936, 32, 4, 128, 768
    tensors = [Tensor("token_embd.weight", (n_embd, n_vocab), GT.Q4_K)]
    for il in range(n_layer):
        tensors += _moe_layer(il, n_embd, n_head, n_head_kv, n_expert, n_ff_exp)
    tensors += [Tensor("output_norm.weight", (n_embd,), GT.F32), Tensor("output.weight", (n_embd, n_vocab), GT.Q6_K)]
    kv = {
        "general.name": "Qwen3-30B-A3B-shaped",
        "{arch}.context_length": 262144,
        "{arch}.embedding_length": n_embd,
        "{arch}.block_count": n_layer,
        "{arch}.feed_forward_length": 6144,
        "{arch}.attention.head_count": n_head,
        "{arch}.attention.head_count_kv": n_head_kv,
        "{arch}.attention.key_length": 128,
        "{arch}.attention.value_length": 128,
        "{arch}.rope.dimension_count": 128,
        "{arch}.expert_count": n_expert,
        "{arch}.expert_used_count": 8,
        "{arch}.expert_feed_forward_length": n_ff_exp,
        "{arch}.vocab_size": n_vocab,
    }
    return write_gguf(path, "qwen3moe", kv, tensors)[0]
