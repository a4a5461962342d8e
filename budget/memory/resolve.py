"""Configuration resolution: what server.cpp, common/fit.cpp and llama_context make of the flags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kvwall.budget.config import ServerConfig
from kvwall.budget.memory.layout import pad
from kvwall.monitors.gguf import ModelInfo
from kvwall.monitors.gguf.arch import RS_ROLLBACK_ARCHS

NGL_DEFAULT_NOTE = "-ngl not given: all layers on the GPU (--fit may move some to the CPU)"

_SPEC_TYPES_WITH_RS = ("draft-mtp", "draft-eagle3", "draft-dflash", "draft-dspark")


@dataclass(frozen=True)
class Resolved:
    """The resolved configuration of one plan, and the notes resolving it gave.

    ``gpu_names`` holds llama.cpp device names (``CUDA0``), the offload targets, in the
    model's device order; ``device_free`` their free bytes as llama.cpp reads them (empty:
    unknown). ``splits`` are the ``-ts`` shares, or the layer counts ``--fit`` chose; empty:
    by free memory (equal shares when it is unknown). ``fit_overrides`` are the tensor
    overrides ``--fit`` added (``(regex, buffer type)``, first match wins); they stand in
    for the user's, which ``--fit`` never combines with its own.
    """

    n_seq: int
    unified: bool
    n_stream: int
    fa: str  # requested after forcing: on/off/auto
    n_rs_seq: int
    n_gpu_layers: int  # resolved count incl. output layer
    gpu_names: tuple[str, ...]
    splits: tuple[float, ...]
    notes: tuple[str, ...]
    device_free: tuple[int, ...] = ()
    fit_overrides: tuple[tuple[str, str], ...] | None = None

    @property
    def fa_effective(self) -> bool:
        """Whether attention runs with flash attention (``auto`` assumed to mean on)."""
        return self.fa != "off"


@dataclass(frozen=True)
class Context:
    """llama_context's sizes after padding."""

    n_ctx: int
    n_ctx_seq: int
    n_batch: int
    n_ubatch: int


def context(model: ModelInfo, config: ServerConfig, rv: Resolved, n_ctx_req: int) -> Context:
    """llama_context's ``n_ctx``, ``n_ctx_seq`` and batch sizes for a requested context."""
    n_ctx = n_ctx_req if n_ctx_req > 0 else model.n_ctx_train
    n_batch = min(n_ctx, config.n_batch)  # causal attention: the batch is limited by the context
    n_ubatch = min(n_batch, config.n_ubatch if config.n_ubatch else n_batch)
    n_ctx = pad(n_ctx)
    if rv.unified:
        n_ctx_seq = n_ctx
    else:
        n_ctx_seq = pad(n_ctx // rv.n_seq)
        n_ctx = n_ctx_seq * rv.n_seq
    return Context(n_ctx, n_ctx_seq, n_batch, n_ubatch)


@dataclass(frozen=True)
class _Slots:
    n_seq: int
    unified: bool
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Offload:
    gpu_names: tuple[str, ...]
    splits: tuple[float, ...]
    n_gpu_layers: int
    device_free: tuple[int, ...]
    notes: tuple[str, ...]


def _slots(config: ServerConfig) -> _Slots:
    """``-np`` / ``-kvu``: slot count and whether they share one pool."""
    notes: list[str] = []
    n_seq = config.n_parallel
    if n_seq < 0:
        n_seq, unified = 4, True
        given = "not given" if "parallel" not in config.explicit else f"{config.n_parallel} (auto)"
        notes.append(f"-np {given}: 4 slots sharing one unified KV pool (llama-server default)")
    else:
        unified = bool(config.kv_unified)
    if config.kv_unified is False and config.n_parallel < 0:
        notes.append("-np auto always uses a unified KV pool; -no-kvu has no effect")
    return _Slots(n_seq, unified, tuple(notes))


def _rollback_rows(model: ModelInfo, config: ServerConfig) -> int:
    """Extra recurrent rows per sequence that speculative decoding rolls back into."""
    spec = tuple(s.strip() for s in (config.spec_type or "").split(",") if s.strip())
    if any(s in _SPEC_TYPES_WITH_RS for s in spec) and model.architecture in RS_ROLLBACK_ARCHS:
        return max(0, config.spec_draft_n_max)
    return 0


def _model_devices(config: ServerConfig, gpu_names: Sequence[str], notes: list[str]) -> tuple[str, ...]:
    """The model's devices: ``-dev`` picks and orders them, ``-sm none`` keeps the ``-mg`` one."""
    gpus = tuple(gpu_names)
    if config.device is not None:
        wanted = [d.strip() for d in config.device.split(",") if d.strip()]
        if wanted == ["none"]:
            return ()
        gpus = tuple(d for d in wanted if d in gpus or not gpus)
    if config.split_mode == "none" and len(gpus) > 1:
        index = config.main_gpu if 0 <= config.main_gpu < len(gpus) else 0
        notes.append(f"-sm none: everything on the main GPU {gpus[index]} (-mg {index})")
        return (gpus[index],)
    if config.split_mode == "tensor" and gpus:
        notes.append(
            "-sm tensor: weights and KV shown split by layer; llama.cpp splits each tensor across the GPUs"
        )
    return gpus


def _offload(
    model: ModelInfo, config: ServerConfig, gpu_names: Sequence[str], device_free: Mapping[str, int] | None
) -> _Offload:
    """``-dev``, ``-sm``, ``-mg``, ``-ts``, ``-ngl``: the GPUs used, their shares and the offloaded layers."""
    notes: list[str] = []
    gpus = _model_devices(config, gpu_names, notes)
    free = tuple(device_free[g] for g in gpus) if device_free and all(g in device_free for g in gpus) else ()
    splits: tuple[float, ...] = ()
    if len(gpus) > 1:
        ts = tuple(config.tensor_split[: len(gpus)]) + (0.0,) * (len(gpus) - len(config.tensor_split))
        if any(ts):
            splits = ts
        elif not free:
            notes.append(
                f"layers split evenly over {', '.join(gpus)} (llama.cpp splits by free memory "
                "when -ts is not given, and that is unknown here)"
            )
    n_all = model.n_layer_all
    ngl = config.n_gpu_layers
    if not gpus:
        n_gpu_layers = 0
    elif ngl is None or ngl < 0:
        n_gpu_layers = n_all + 1
        if ngl is None:
            notes.append(NGL_DEFAULT_NOTE)
    else:
        n_gpu_layers = min(ngl, n_all + 1)
    return _Offload(gpus, splits, n_gpu_layers, free, tuple(notes))


def resolve(
    model: ModelInfo,
    config: ServerConfig,
    gpu_names: Sequence[str],
    device_free: Mapping[str, int] | None = None,
) -> Resolved:
    """Resolve slots, flash attention, speculative rows and offload for one plan."""
    notes: list[str] = list(config.notes)
    slots = _slots(config)
    notes.extend(slots.notes)
    fa = config.flash_attn
    if fa != "off" and model.architecture == "grok":
        fa = "off"
        notes.append("flash attention forced off: llama.cpp does not support it with Grok")
    offload = _offload(model, config, gpu_names, device_free)
    notes.extend(offload.notes)
    return Resolved(
        n_seq=slots.n_seq,
        unified=slots.unified,
        n_stream=1 if slots.unified else slots.n_seq,
        fa=fa,
        n_rs_seq=_rollback_rows(model, config),
        n_gpu_layers=offload.n_gpu_layers,
        gpu_names=offload.gpu_names,
        splits=offload.splits,
        notes=tuple(notes),
        device_free=offload.device_free,
    )
