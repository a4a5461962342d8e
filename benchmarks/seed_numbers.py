"""The seed's memory-wall numbers, computed by kvwall's memory model from real models' shapes.

Writes header-only GGUFs of Llama-3.1-70B, a Qwen3.6-35B-A3B-shaped MoE and DeepSeek-V3,
all at Q4_K_M (:mod:`kvwall.app.demo.realshapes`: the real tensor tables, no weights),
reads them back with kvwall's GGUF reader and plans them with ``plan_memory`` and
``max_context``. Nothing in the table is typed in: every figure comes out of those calls.
The README's section "The numbers behind the memory wall" is this script's Markdown, and
tests/unit/test_seed_numbers.py keeps the two equal.

    python benchmarks/seed_numbers.py                  # the Markdown section
    python benchmarks/seed_numbers.py --json           # the figures
    python benchmarks/seed_numbers.py --readme README.md   # rewrite the README's section
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kvwall.app.demo.realshapes import write_header
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import DeviceBudget, MemoryPlan, max_context, plan_memory
from kvwall.budget.units import format_bytes, parse_size
from kvwall.monitors.gguf import ModelInfo, read_model

GPU = "CUDA0"
FREE_AFTER_WEIGHTS = parse_size("34GiB")  # the seed's "34 GB free" (see the notes)
H200 = parse_size("141GB")  # the spec sheet's capacity
GPU_16GB = parse_size("16GiB")  # a "16 GB" card holds 16 GiB
Q8 = ("-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on")
BEGIN, END = "<!-- seed-numbers:begin -->", "<!-- seed-numbers:end -->"


def plan(model: ModelInfo, args: Sequence[str], *, free: int | None = None) -> MemoryPlan:
    """``plan_memory`` of ``llama-server -m MODEL ARGS`` on one CUDA GPU; with ``free``
    bytes free on it, ``--fit`` places the model as llama-server would."""
    config = parse_command_line(["llama-server", "-m", model.path, *args])
    device_free = {GPU: free} if free is not None else None
    return plan_memory(model, config, gpu_names=(GPU,), device_free=device_free)


def context_fitting(model: ModelInfo, args: Sequence[str], free: int) -> int:
    """``max_context``: the largest ``-c`` whose plan fits the GPU's ``free`` bytes."""
    config = parse_command_line(["llama-server", "-m", model.path, *args])
    return max_context(model, config, free, gpu_names=(GPU,), device_free={GPU: free})


def device(p: MemoryPlan, name: str) -> DeviceBudget:
    """The plan's row for device ``name``."""
    return next(d for d in p.devices if d.name == name)


# ---------------------------------------------------------------------------------------
# The figures


@dataclass(frozen=True)
class Dense70B:
    """Llama-3.1-70B at Q4_K_M: weights, the 128k KV cache, and what 34 GiB or an H200 holds."""

    weights_bytes: int
    kv_128k_bytes: int
    kv_per_token_f16: int
    kv_per_token_q8_0: int
    kv_only_tokens_f16: int
    kv_only_tokens_q8_0: int
    plan_tokens_f16: int
    plan_tokens_q8_0_one_slot: int
    plan_tokens_q8_0_two_slots: int
    n_ctx_train: int
    agents_kv_bytes: int
    agents_gpu_bytes: int
    h200_tokens_per_agent_f16: int
    h200_tokens_per_agent_q8_0: int


def dense_70b(model: ModelInfo) -> Dense70B:
    one = ("-np", "1")
    at_128k = plan(model, ("-c", "131072", *one))
    q8 = plan(model, ("-c", "131072", *one, *Q8))
    # the GPU holds the weights and has 34 GiB left: KV and compute buffers share it
    free = device(at_128k, GPU).weights_bytes + FREE_AFTER_WEIGHTS
    agents = plan(model, ("-np", "4", "-c", str(4 * 131072)))
    return Dense70B(
        weights_bytes=at_128k.weights_bytes,
        kv_128k_bytes=at_128k.kv_bytes,
        kv_per_token_f16=int(at_128k.kv_bytes_per_cell),
        kv_per_token_q8_0=int(q8.kv_bytes_per_cell),
        kv_only_tokens_f16=int(FREE_AFTER_WEIGHTS // at_128k.kv_bytes_per_cell),
        kv_only_tokens_q8_0=int(FREE_AFTER_WEIGHTS // q8.kv_bytes_per_cell),
        plan_tokens_f16=context_fitting(model, one, free),
        plan_tokens_q8_0_one_slot=context_fitting(model, (*one, *Q8), free),
        plan_tokens_q8_0_two_slots=context_fitting(model, ("-np", "2", "-kvu", *Q8), free),
        n_ctx_train=model.n_ctx_train,
        agents_kv_bytes=agents.kv_bytes,
        agents_gpu_bytes=device(agents, GPU).total_bytes,
        h200_tokens_per_agent_f16=context_fitting(model, ("-np", "4"), H200) // 4,
        h200_tokens_per_agent_q8_0=context_fitting(model, ("-np", "4", *Q8), H200) // 4,
    )


@dataclass(frozen=True)
class Fitted:
    """What ``--fit`` makes of one command on the 16 GiB GPU."""

    n_ctx: int
    cpu_expert_layers: int
    gpu_bytes: int
    host_bytes: int
    summary: str


def fitted(model: ModelInfo, args: Sequence[str]) -> Fitted:
    p = plan(model, args, free=GPU_16GB)
    assert p.placement is not None, p.errors
    return Fitted(
        n_ctx=p.n_ctx,
        cpu_expert_layers=len(p.placement.cpu_expert_layers),
        gpu_bytes=device(p, GPU).total_bytes,
        host_bytes=device(p, "Host").total_bytes,
        summary=p.placement.summary,
    )


@dataclass(frozen=True)
class MoeOn16GB:
    """The Qwen3.6-35B-A3B shape on a 16 GiB GPU: every expert on the CPU, or ``--fit``'s
    choice with the trained context asked for, or with llama-server's defaults."""

    weights_bytes: int
    n_layer: int
    n_ctx_train: int
    n_kv_layers: int
    recurrent_bytes: int
    gpu_bytes_no_offload: int
    all_experts_cpu: Fitted
    full_context: Fitted
    defaults: Fitted


def moe_on_16gb(model: ModelInfo) -> MoeOn16GB:
    one = ("-np", "1")
    full = ("-c", str(model.n_ctx_train), *one)
    everything = plan(model, (*full, "-fit", "off"))
    return MoeOn16GB(
        weights_bytes=everything.weights_bytes,
        n_layer=model.n_layer,
        n_ctx_train=model.n_ctx_train,
        n_kv_layers=everything.kv_layers,
        recurrent_bytes=everything.recurrent_bytes,
        gpu_bytes_no_offload=device(everything, GPU).total_bytes,
        all_experts_cpu=fitted(model, (*one, "-ot", "exps=CPU")),
        full_context=fitted(model, full),
        defaults=fitted(model, one),
    )


@dataclass(frozen=True)
class MlaCompute:
    """DeepSeek-V3 under flash attention: compute buffers and KV at f16 and at q8_0."""

    n_ctx: int
    kv_f16_bytes: int
    kv_q8_0_bytes: int
    gpu_compute_f16: int
    gpu_compute_q8_0: int
    host_compute_f16: int
    host_compute_q8_0: int
    k_layer_f16_bytes: int
    k_layer_q8_0_bytes: int


def mla_compute(model: ModelInfo) -> MlaCompute:
    args = ("-np", "1", "-c", "131072", "-fa", "on", "-ot", "exps=CPU")
    f16 = plan(model, args)
    q8 = plan(model, (*args, *Q8))
    return MlaCompute(
        n_ctx=f16.n_ctx,
        kv_f16_bytes=f16.kv_bytes,
        kv_q8_0_bytes=q8.kv_bytes,
        gpu_compute_f16=device(f16, GPU).compute_bytes,
        gpu_compute_q8_0=device(q8, GPU).compute_bytes,
        host_compute_f16=device(f16, "Host").compute_bytes,
        host_compute_q8_0=device(q8, "Host").compute_bytes,
        # MLA keeps one K row per cell and layer; V is a view of it
        k_layer_f16_bytes=f16.kv_bytes // f16.kv_layers,
        k_layer_q8_0_bytes=q8.kv_bytes // q8.kv_layers,
    )


@dataclass(frozen=True)
class Figures:
    """Every figure of the table."""

    dense_70b: Dense70B
    moe_16gb: MoeOn16GB
    mla: MlaCompute


def figures(folder: Path) -> Figures:
    """Write the three headers in ``folder``, read them back and compute the figures."""
    models = {
        key: read_model(str(write_header(key, folder / f"{key}.gguf")))
        for key in ("llama-3.1-70b", "qwen3.6-35b-a3b", "deepseek-v3")
    }
    return Figures(
        dense_70b(models["llama-3.1-70b"]),
        moe_on_16gb(models["qwen3.6-35b-a3b"]),
        mla_compute(models["deepseek-v3"]),
    )


# ---------------------------------------------------------------------------------------
# The Markdown


def gb(n: int) -> str:
    """Decimal gigabytes, as disk sizes and GPU spec sheets say them."""
    return f"{n / 10**9:.2f} GB"


def tokens(n: int) -> str:
    return f"{n:,}"


def _table(f: Figures) -> list[str]:
    d, q, m = f.dense_70b, f.moe_16gb, f.mla
    ratio = d.kv_per_token_q8_0 / d.kv_per_token_f16
    rows = [
        ("A 70B at 4 bits holds about 42 GB of weights",
         f"{gb(d.weights_bytes)} ({format_bytes(d.weights_bytes)})",
         "Llama-3.1-70B Q4_K_M"),
        ("128k tokens of f16 KV take about 40 GiB (the seed says 43 GB)",
         f"{format_bytes(d.kv_128k_bytes)} = {gb(d.kv_128k_bytes)}: "
         f"{format_bytes(d.kv_per_token_f16)} a token",
         "`-c 131072 -np 1`"),
        ("With 34 GB free, about 109k tokens fit at f16",
         f"KV alone: {tokens(d.kv_only_tokens_f16)} tokens; the whole plan (KV and compute "
         f"buffers in the 34 GiB): {tokens(d.plan_tokens_f16)}",
         "34 GiB free on CUDA0 after the weights, `-np 1`"),
        ("... and about 218k at q8_0",
         f"KV alone: {tokens(d.kv_only_tokens_q8_0)} (q8_0 is {format_bytes(d.kv_per_token_q8_0)} "
         f"a token, {ratio:.0%} of f16); the whole plan: {tokens(d.plan_tokens_q8_0_one_slot)} "
         f"for one slot (the trained context), {tokens(d.plan_tokens_q8_0_two_slots)} for two "
         "slots sharing the pool",
         "`-ctk q8_0 -ctv q8_0 -fa on`; `-np 2 -kvu`"),
        ("Four sub-agents at 128k need 160 GiB of KV, more than an H200's 141 GB",
         f"{format_bytes(d.agents_kv_bytes)} ({gb(d.agents_kv_bytes)}) of KV, "
         f"{format_bytes(d.agents_gpu_bytes)} on the GPU with the weights; an H200 holds "
         f"4 × {tokens(d.h200_tokens_per_agent_f16)} tokens at f16, "
         f"4 × {tokens(d.h200_tokens_per_agent_q8_0)} at q8_0",
         "`-np 4 -c 524288`; 141 GB GPU"),
        ("A Qwen3.6-35B-A3B-shaped MoE on 16 GB, with experts offloaded",
         f"every expert on the CPU: GPU {format_bytes(q.all_experts_cpu.gpu_bytes)}, host "
         f"{format_bytes(q.all_experts_cpu.host_bytes)}, `--fit` keeps "
         f"{tokens(q.all_experts_cpu.n_ctx)} tokens; asked for the trained context, `--fit` "
         f"moves the experts of {q.full_context.cpu_expert_layers} of {q.n_layer} layers: GPU "
         f"{format_bytes(q.full_context.gpu_bytes)}, host {format_bytes(q.full_context.host_bytes)}, "
         f"{tokens(q.full_context.n_ctx)} tokens; with no `-c`, it shrinks the context to "
         f"{tokens(q.defaults.n_ctx)} first, then moves the experts of "
         f"{q.defaults.cpu_expert_layers} layers",
         f"16 GiB free on CUDA0, `-np 1`; `-ot exps=CPU`; `-c {q.n_ctx_train}`; no `-c`"),
        ("A DeepSeek compute buffer shrinks when the KV cache goes from f16 to q8_0 under "
         "flash attention",
         f"not predicted: GPU compute buffer {format_bytes(m.gpu_compute_f16)} at f16, "
         f"{format_bytes(m.gpu_compute_q8_0)} at q8_0, while the KV cache goes from "
         f"{format_bytes(m.kv_f16_bytes)} to {format_bytes(m.kv_q8_0_bytes)} (why: below)",
         "DeepSeek-V3 Q4_K_M, `-c 131072 -fa on -ot exps=CPU`"),
    ]  # fmt: skip
    lines = ["| The seed says | kvwall's memory model computes | Model, flags |", "|---|---|---|"]
    lines += [f"| {claim} | {figure} | {how} |" for claim, figure, how in rows]
    return lines


def _notes(f: Figures) -> list[str]:
    d, q, m = f.dense_70b, f.moe_16gb, f.mla
    return [
        f"- **GB and GiB.** llama.cpp prints MiB and GiB (powers of 1024); disk sizes and "
        f"spec sheets say GB (powers of 1000). The 128k cache is {tokens(d.kv_128k_bytes)} "
        f"bytes: {format_bytes(d.kv_128k_bytes)}, or {gb(d.kv_128k_bytes)}, so the seed's "
        "40 GiB and 43 GB are the same cache. A \"16 GB\" graphics card holds 16 GiB (its "
        "memory chips come in powers of two); the H200 is taken at its spec sheet's 141 GB.",
        f"- **109k and 218k.** 34 GiB over {format_bytes(d.kv_per_token_f16)} a token is "
        f"{tokens(d.kv_only_tokens_f16)} tokens, 109k in units of 1,024: the seed's 34 GB is "
        "34 GiB. Its 218k doubles that, as if q8_0 took 8 bits a value; a q8_0 block is 34 "
        f"bytes for 32 values, so the cache holds {tokens(d.kv_only_tokens_q8_0)}. The whole "
        "plan also keeps the compute buffers (which grow with the context) in those 34 GiB, "
        f"and one slot never uses more than the trained context, {tokens(d.n_ctx_train)}.",
        f"- **Four agents.** {format_bytes(d.agents_kv_bytes)} is {gb(d.agents_kv_bytes)}: "
        f"{_h200_verdict(d)}",
        "- **The MoE on 16 GB.** The Qwen3.5-35B-A3B topology (Qwen3.6-35B-A3B keeps it): "
        f"{q.n_layer} layers, of which {q.n_kv_layers} hold a KV cache (gated attention, 2 KV "
        f"heads of 256) and the others Gated DeltaNet state ({format_bytes(q.recurrent_bytes)} "
        "a slot, whatever the context); 256 experts (8 used) of width 512 and a shared "
        "expert in every layer. The trained context is cheap; the weights "
        f"({format_bytes(q.weights_bytes)}) are the problem: without offload the GPU would "
        f"need {format_bytes(q.gpu_bytes_no_offload)}. With `-c {q.n_ctx_train}` kvwall's "
        f"`--fit` (common/fit.cpp's steps) says \"{q.full_context.summary}\"; each expert "
        "layer kept on the GPU runs at GPU memory bandwidth instead of the host's. Without "
        "`-c`, `--fit` shrinks the context to its minimum before it moves a layer: "
        f"\"{q.defaults.summary}\". Give `-c`.",
        "- **DeepSeek's compute buffer.** kvwall's compute estimate has no cache-type term, "
        "and llama.cpp b11434 agrees where its graph is concerned: with flash attention, "
        "`build_attn_mha` hands the cache's K and V views to `ggml_flash_attn_ext` as they "
        "are (only an f32 K or V is cast to f16), and MLA's V is a view of K, so no tensor "
        "of the graph depends on the cache type. The CPU build logs the same compute buffer "
        "for f16 and q8_0 (the tiny MLA model of the integration tests). CUDA differs, the "
        "other way: for prompt batches its tile and MMA kernels need f16 K/V, and "
        "`ggml_cuda_flash_attn_ext_get_alloc_size` adds an f16 copy of the K view (V, a view "
        "of K, shares it) to the flash-attention node, inside the compute buffer: about "
        f"{format_bytes(m.k_layer_f16_bytes)} more at q8_0 for this context: a growth. The "
        "one path found in the source where a compute buffer shrinks with the cache type is "
        "attention running on another device than the cache (the op falls back to the CPU "
        "for a head size or type its backend lacks): the scheduler then copies the K view "
        "into that device's compute buffer in the cache's type, "
        f"{format_bytes(m.k_layer_f16_bytes)} at f16 and {format_bytes(m.k_layer_q8_0_bytes)} "
        "at q8_0 for one layer. kvwall models neither, and neither could be measured here "
        "(no CUDA device), so the report is not reproduced.",
        "- **The models.** Header-only GGUFs (`kvwall.app.demo.realshapes`): each model's "
        "public config.json as llama.cpp's converter writes it, the tensor types "
        "`llama-quantize Q4_K_M` picks, no tensor data. DeepSeek-V3 and R1 share the shape. "
        "Run `python benchmarks/seed_numbers.py` to print this section, `--json` for the "
        "figures.",
    ]  # fmt: skip


def _h200_verdict(d: Dense70B) -> str:
    over = d.agents_kv_bytes > H200 and d.agents_kv_bytes > parse_size("141GiB")
    verdict = "more than an H200 in either unit" if over else "not more than an H200's 141 GB"
    if d.h200_tokens_per_agent_q8_0 >= d.n_ctx_train:
        return f"{verdict}. With a q8_0 cache the four 128k slots and the weights fit on one."
    return f"{verdict}; a q8_0 cache is not enough to fit all four 128k slots on one."


def markdown(f: Figures) -> str:
    """The README section's body: the table and its notes."""
    return "\n".join([*_table(f), "", *_notes(f)]) + "\n"


def update_readme(path: Path, body: str) -> bool:
    """Replace the text between the section's markers in ``path``; True when it changed.

    Raises:
        ValueError: the file has not exactly one pair of markers.
    """
    text = path.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"{path}: needs one {BEGIN} and one {END} line")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = f"{head}{BEGIN}\n{body}{END}{tail}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def readme_section(text: str) -> str:
    """The text between the markers of a README (what :func:`markdown` must equal)."""
    return text.partition(BEGIN)[2].partition(END)[0].removeprefix("\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--readme", type=Path, help="rewrite this README's section in place")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        f = figures(Path(tmp))
    if args.json:
        print(json.dumps(asdict(f), indent=1))
    elif args.readme:
        changed = update_readme(args.readme, markdown(f))
        print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
    else:
        sys.stdout.write(markdown(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
