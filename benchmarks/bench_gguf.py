"""Benchmark: kvwall's GGUF header reader vs gguf-py's GGUFReader on a Qwen-sized header.

Builds (once, in a temp dir) a sparse GGUF with a 152,064-token vocabulary, 151,387 BPE
merges, a token-type array and 1,000 tensors whose data region is a hole (the file claims
tens of GB but costs nothing on disk), then prints the median read time of each reader.

    python benchmarks/bench_gguf.py [--runs N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gguf
from kvwall.monitors.gguf import read_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
from gguf_builders import GT, Tensor, minimal_kv, write_gguf

N_VOCAB = 152_064
N_MERGES = 151_387
N_TENSORS = 1_000


def _vocab(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyzĠĊ"
    toks = [f"<|special_{i}|>" for i in range(64)]
    while len(toks) < N_VOCAB:
        n = min(int(rng.expovariate(1 / 6)) + 1, 40)
        toks.append("".join(rng.choice(letters) for _ in range(n)) + str(len(toks)))
    return toks


def build(directory: Path) -> Path:
    rng = random.Random(0)
    tokens = _vocab(rng)
    merges = [
        f"{tokens[rng.randrange(64, N_VOCAB)]} {tokens[rng.randrange(64, N_VOCAB)]}"
        for _ in range(N_MERGES)
    ]
    n_embd, n_ff, n_kv = 8192, 29696, 1024
    tensors = [Tensor("token_embd.weight", (n_embd, N_VOCAB), GT.Q4_K)]
    suffixes = [
        ("attn_norm.weight", (n_embd,), GT.F32),
        ("attn_q.weight", (n_embd, n_embd), GT.Q4_K),
        ("attn_q.bias", (n_embd,), GT.F32),
        ("attn_k.weight", (n_embd, n_kv), GT.Q4_K),
        ("attn_k.bias", (n_kv,), GT.F32),
        ("attn_v.weight", (n_embd, n_kv), GT.Q6_K),
        ("attn_v.bias", (n_kv,), GT.F32),
        ("attn_output.weight", (n_embd, n_embd), GT.Q4_K),
        ("ffn_norm.weight", (n_embd,), GT.F32),
        ("ffn_gate.weight", (n_embd, n_ff), GT.Q4_K),
        ("ffn_up.weight", (n_embd, n_ff), GT.Q4_K),
        ("ffn_down.weight", (n_ff, n_embd), GT.Q6_K),
    ]
    il = 0
    while len(tensors) < N_TENSORS - 2:
        for suffix, shape, qtype in suffixes:
            if len(tensors) < N_TENSORS - 2:
                tensors.append(Tensor(f"blk.{il}.{suffix}", shape, qtype))
        il += 1
    tensors += [
        Tensor("output_norm.weight", (n_embd,), GT.F32),
        Tensor("output.weight", (n_embd, N_VOCAB), GT.Q6_K),
    ]
    kv = minimal_kv(
        il,
        n_embd,
        28,
        **{
            "{arch}.context_length": 32768,
            "{arch}.attention.head_count_kv": 4,
            "{arch}.feed_forward_length": n_ff,
            "general.name": "bench-qwen2",
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.token_type": (
                [1] * N_VOCAB,
                gguf.GGUFValueType.ARRAY,
                gguf.GGUFValueType.INT32,
            ),
            "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}" * 40,
        },
    )
    path = directory / "bench-qwen2-152k.gguf"
    write_gguf(path, "qwen2", kv, tensors, tokens=tokens, merges=merges)
    return path


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _cold_process_ms(path: Path, runs: int) -> float:
    """Median ms to import the reader and read ``path`` in a fresh interpreter."""
    import subprocess

    code = (
        "import time; t = time.perf_counter(); "
        "from kvwall.monitors.gguf import read_model; "
        f"read_model({str(path)!r}); print((time.perf_counter() - t) * 1000)"
    )
    times = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(runs)
    ]
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="runs of kvwall's reader (median)")
    ap.add_argument("--ref-runs", type=int, default=1, help="runs of gguf.GGUFReader (median)")
    ap.add_argument("--keep", type=Path, help="build the file in this folder and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        path = build(directory)
        built_s = time.perf_counter() - t0
        apparent = path.stat().st_size
        on_disk = path.stat().st_blocks * 512
        model = read_model(str(path))
        ref = gguf.GGUFReader(str(path))
        assert len(ref.tensors) == len(model.tensors) == N_TENSORS
        assert sum(int(t.n_bytes) for t in ref.tensors) == model.weights_bytes
        assert model.n_vocab == N_VOCAB
        del ref
        ours = median_ms(lambda: read_model(str(path)), args.runs)
        theirs = median_ms(lambda: gguf.GGUFReader(str(path)), args.ref_runs)
        print(
            f"file: {apparent / 2**30:.1f} GiB apparent, {on_disk / 2**20:.1f} MiB on disk "
            f"(built in {built_s:.1f} s); {N_VOCAB:,} tokens, {N_MERGES:,} merges, "
            f"{N_TENSORS:,} tensors, weights {model.weights_bytes / 2**30:.2f} GiB"
        )
        print(f"{'reader':<28}{'median ms':>12}{'runs':>6}")
        print(f"{'kvwall read_model':<28}{ours:>12.1f}{args.runs:>6}")
        print(f"{'gguf.GGUFReader (gguf-py)':<28}{theirs:>12.1f}{args.ref_runs:>6}")
        print(f"speed-up: {theirs / ours:.0f}x; goal < 50 ms: {'met' if ours < 50 else 'NOT met'}")
        cold = _cold_process_ms(path, args.runs)
        print(
            f"{'cold process (import+read)':<28}{cold:>12.1f}{args.runs:>6}"
            "   (a fresh interpreter, as `kvwall plan` runs: plain walk, no numpy)"
        )


if __name__ == "__main__":
    main()
