"""``kvwall plan``: what llama-server will allocate for a model and command line, and what-ifs.

Qt-free and quick: reads only the GGUF header, parses the command line as llama-server
does, runs the memory model and prints text or the documented JSON object
(``docs/json-schema.md``, ``plan`` section). Device memory is probed only when no
``--memory`` is given, and only the sources this machine can have.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TextIO

from kvwall.budget.units import format_bytes, sanitize

if TYPE_CHECKING:  # imported lazily at run time: `kvwall plan` reads only what it needs
    from kvwall.budget.config import ServerConfig
    from kvwall.budget.memory import MemoryPlan
    from kvwall.budget.whatif import WhatIf
    from kvwall.monitors.gguf import ModelInfo
    from kvwall.monitors.llama_devices import LlamaDevice, LlamaDevices
    from kvwall.monitors.snapshot import DeviceMemory

JsonObject = dict[str, Any]  # a JSON object as json.dumps takes it

SCHEMA_VERSION = 1

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_DOES_NOT_FIT = 3


HELP = """\
usage: kvwall plan MODEL.gguf [llama-server flags...] [options]
       kvwall plan --cmd "llama-server -m MODEL.gguf [flags...]" [options]

Predict what llama-server allocates for MODEL.gguf with these flags: weights, KV cache,
recurrent state, compute and output buffers per device, the context each slot gets, the
defaults and guesses behind the numbers, and a what-if table (KV cache types f16, q8_0,
q4_0 and any you name, crossed with the current slot count and fewer slots) with the bytes
each change saves, the largest context that fits, and the exact command line. For a
server on GPUs: where llama-server's --fit puts the layers, and an offload table (-ngl N,
-ncmoe N and -ot exps=CPU for a MoE, -nkvo, -ts for several GPUs) with the GPU memory each
frees, the largest context it allows, its speed cost and its command line.

llama-server flags are read exactly as llama-server reads them (short, long, --x=y and
underscore spellings; LLAMA_ARG_* variables from your environment or in front of --cmd).
Only the GGUF header is read, never the weights.

options:
  --cmd "COMMAND"         the whole llama-server (or `llama serve`) command line as one
                          string; VAR=VALUE words in front of it are its environment.
                          Its binary (a path, or a name on PATH such as llama-server-vulkan)
                          is asked for its devices and build (`--list-devices`,
                          `--version`, run with that environment; the answer is cached
                          per binary and device variables: GGML_VK_VISIBLE_DEVICES,
                          CUDA_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES, ...)
  --memory SIZE           the memory budget for the what-if table and --fit, e.g. 24G,
                          24GiB, 24576M, 25.7GB (G/GiB/M/MiB are binary, GB/MB decimal);
                          with several GPUs, split in proportion to their free memory.
                          Default: free memory now (the devices' free memory as the
                          binary reports it, or kvwall's GPU monitors, else available
                          host RAM)
  --memory DEV=SIZE,...   free memory per llama.cpp device, e.g. Vulkan0=2G,Vulkan1=2G;
                          plans for these devices (in llama.cpp's order) unless --gpus
  --gpus NAMES            plan for these llama.cpp devices instead of the ones detected:
                          CUDA0,CUDA1 / ROCm0 / Vulkan0 / MTL0 ..., or "none" for a
                          CPU-only server
  --what-if-cache TYPE    add a cache type to the what-if table (repeatable or comma-
                          separated): f32 f16 bf16 q8_0 q4_0 q4_1 iq4_nl q5_0 q5_1
  --json                  print the documented JSON object (docs/json-schema.md)
  -h, --help              show this help

exit status: 0 plan printed, it fits the memory budget; 1 llama.cpp would refuse this
configuration (the reason is printed, no budget); 2 bad path, unreadable GGUF (or a split
model's later shard, or a big-endian one), or an argument or flag value llama-server
rejects; 3 plan printed, it does not fit the memory budget, in total or on one GPU (the
what-if commands that fit are offered; a command --fit starts by moving layers to the CPU
fits). With --json, errors are printed as a JSON object too
({"schema_version": 1, "error": "...", "exit_code": 2}).
"""

_OWN_VALUE_OPTIONS = ("--memory", "--cmd", "--gpus", "--what-if-cache")
_OWN_FLAGS = ("--json", "-h", "--help")


class UsageError(ValueError):
    """A bad argument (one line on stderr, exit code 2)."""


@dataclass
class _Args:
    llama_argv: list[str]
    env: dict[str, str]
    memory: int | None = None
    device_memory: dict[str, int] | None = None  # --memory Vulkan0=2G,Vulkan1=2G
    gpus: tuple[str, ...] | None = None
    extra_types: tuple[str, ...] = ()
    cmd_env: dict[str, str] | None = None  # VAR=VALUE words in front of --cmd
    binary_known: bool = False  # --cmd named its program (asked for its devices)
    run_env: dict[str, str] | None = None  # the environment the server would run with
    json: bool = False
    help: bool = False


@dataclass(frozen=True)
class _Words:
    """The command line sorted: kvwall's own options and flags, and llama-server's words."""

    own: dict[str, list[str]]  # every value given to each of _OWN_VALUE_OPTIONS
    flags: frozenset[str]
    rest: list[str]


def _sort_words(argv: Sequence[str]) -> _Words:
    own: dict[str, list[str]] = {name: [] for name in _OWN_VALUE_OPTIONS}
    rest: list[str] = []
    flags: set[str] = set()
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if name in _OWN_VALUE_OPTIONS:
            if eq:
                own[name].append(inline)
                i += 1
                continue
            if i + 1 >= len(argv):
                raise UsageError(f"{name}: expected a value")
            own[name].append(argv[i + 1])
            i += 2
            continue
        if arg in _OWN_FLAGS:
            flags.add(arg)
            i += 1
            continue
        rest.append(arg)
        i += 1
    return _Words(own, frozenset(flags), rest)


def _split_args(argv: Sequence[str], environ: Mapping[str, str]) -> _Args:
    words = _sort_words(argv)
    out = _Args(llama_argv=[], env={}, json="--json" in words.flags,
                help=bool(words.flags & {"-h", "--help"}))
    if out.help:
        return out
    _read_own_options(out, words.own)
    env = {k: v for k, v in environ.items() if k.startswith(("LLAMA_ARG_", "LLAMA_API_KEY"))}
    if words.own["--cmd"]:
        out.llama_argv, out.cmd_env, out.binary_known = _split_cmd(words.own["--cmd"][-1],
                                                                   words.rest)
        env.update(out.cmd_env)
    else:
        rest = words.rest
        if not rest:
            raise UsageError("give a model: kvwall plan MODEL.gguf [flags...] (see --help)")
        if not rest[0].startswith("-"):
            model, flags_rest = rest[0], rest[1:]
            out.llama_argv = ["llama-server", "-m", model, *flags_rest]
        else:
            out.llama_argv = ["llama-server", *rest]
    out.env = env
    out.run_env = {**environ, **(out.cmd_env or {})}
    return out


def _read_own_options(out: _Args, own: Mapping[str, list[str]]) -> None:
    """--memory, --gpus and --what-if-cache into ``out`` (the last value wins)."""
    from kvwall.budget.cachetypes import CACHE_TYPES
    from kvwall.monitors.llama_devices import is_device_name

    if own["--gpus"]:
        names = [n.strip() for n in own["--gpus"][-1].split(",") if n.strip()]
        out.gpus = () if names in ([], ["none"]) else tuple(names)
        for name in out.gpus:
            if not is_device_name(name):
                raise UsageError(f"--gpus: not a llama.cpp device name: {name!r} "
                                 "(CUDA0, ROCm0, Vulkan0, MTL0...)")
    if own["--memory"]:
        value = own["--memory"][-1]
        if "=" in value:
            out.device_memory = _device_sizes(value, out.gpus)
        else:
            out.memory = _size(value)
    types: list[str] = []
    for item in own["--what-if-cache"]:
        for t in (part.strip() for part in item.split(",")):
            if t and t not in CACHE_TYPES:
                raise UsageError(
                    f"--what-if-cache: Unsupported cache type: {t} (allowed: {', '.join(CACHE_TYPES)})"
                )
            if t:
                types.append(t)
    out.extra_types = tuple(types)


def _size(text: str) -> int:
    """One ``--memory`` size, more than 0."""
    from kvwall.budget.units import parse_size

    try:
        size = parse_size(text.strip())
    except ValueError as exc:
        raise UsageError(f"--memory: {exc}") from None
    if size <= 0:
        raise UsageError(f"--memory: must be more than 0, got {text!r}")
    return size


def _device_sizes(value: str, gpus: tuple[str, ...] | None) -> dict[str, int]:
    """``--memory Vulkan0=2G,Vulkan1=2G``: llama.cpp device name -> free bytes."""
    from kvwall.monitors.llama_devices import is_device_name

    sizes: dict[str, int] = {}
    for part in (p.strip() for p in value.split(",")):
        name, eq, size = part.partition("=")
        name = name.strip()
        if not eq or not is_device_name(name) or name.lower() in ("cpu", "host"):
            raise UsageError(f"--memory: expected DEVICE=SIZE (e.g. Vulkan0=2G,Vulkan1=2G), "
                             f"got {part!r}")
        if name in sizes:
            raise UsageError(f"--memory: {name} is given twice")
        if gpus is not None and name not in gpus:
            raise UsageError(f"--memory: {name} is not one of --gpus {','.join(gpus) or 'none'}")
        sizes[name] = _size(size)
    return sizes


def _split_cmd(cmd: str, rest: Sequence[str]) -> tuple[list[str], dict[str, str], bool]:
    """``--cmd "VAR=VALUE llama-server ..."``: (llama-server's argv, the VAR=VALUE words,
    whether the command named its program)."""
    if rest:
        raise UsageError(
            f"--cmd takes the whole command line; unexpected extra arguments: {shlex.join(rest)}"
        )
    try:
        words = shlex.split(cmd)
    except ValueError as exc:
        raise UsageError(f"--cmd: cannot split the command line: {exc}") from None
    cmd_env: dict[str, str] = {}
    while words and "=" in words[0] and words[0].split("=")[0].isidentifier():
        key, _, value = words.pop(0).partition("=")
        cmd_env[key] = value
    if words and words[0] == "env":
        words.pop(0)
    if not words:
        raise UsageError("--cmd: the command line is empty")
    named = not words[0].startswith("-")
    if not named:
        words.insert(0, "llama-server")
    return words, cmd_env, named


# ---------------------------------------------------------------------------
# memory the plan is measured against


@dataclass(frozen=True)
class _Budget:
    memory_bytes: int
    gpu_names: tuple[str, ...]
    fit_free_bytes: int | None
    source: str  # plain words: "free GPU memory (CUDA0: NVML now)", "available host RAM now", "--memory"
    devices: tuple[LlamaDevice, ...] = ()  # the devices planned for, with the free memory used
    # llama.cpp device name -> free bytes as llama.cpp would see them, for every device in
    # gpu_names: plan_memory's device_free (None when any is unknown: equal shares then)
    device_free: Mapping[str, int] | None = None
    found: LlamaDevices | None = None  # what the binary (or kvwall's monitors) reported
    notes: tuple[str, ...] = ()  # what the budget assumed, for the assumptions


def _gpu_present(root: str = "/") -> bool:
    """A GPU llama.cpp could use is likely here (NVIDIA or AMD in sysfs, or a Mac).

    A few sysfs reads, so a CPU-only machine never loads the GPU monitors.
    """
    if sys.platform == "darwin":
        return True
    pci = os.path.join(root, "sys/bus/pci/devices")
    try:
        entries = os.listdir(pci)
    except OSError:
        return False
    for dev in entries:
        try:
            with open(os.path.join(pci, dev, "vendor")) as f:
                vendor = f.read().strip().lower()
            if vendor not in ("0x10de", "0x1002"):
                continue
            with open(os.path.join(pci, dev, "class")) as f:
                if f.read().strip().lower().startswith("0x03"):
                    return True
        except OSError:
            continue
    return False


def _gpu_pools() -> tuple[DeviceMemory, ...]:
    """kvwall's GPU pools now (NVML, amdgpu sysfs, Apple); none on a machine without a GPU."""
    if not _gpu_present():
        return ()
    try:
        from kvwall.monitors.devices import MemorySources

        sources = MemorySources()
        try:
            return sources.poll().devices
        finally:
            sources.close()
    except Exception:  # noqa: BLE001 - a broken driver must not stop a plan: use host RAM
        return ()


def _find_devices(args: _Args) -> LlamaDevices | None:
    """The devices the server would see: its binary's ``--list-devices`` when --cmd names
    it (with the command's environment; cached), else kvwall's monitors; None when
    --gpus and --memory say everything (and no binary is named)."""
    from kvwall.monitors.llama_devices import from_monitors, known_devices

    env = args.run_env if args.run_env is not None else dict(os.environ)
    if args.binary_known:
        return known_devices(args.llama_argv, env, _gpu_pools)
    if args.gpus is not None and (args.gpus == () or args.device_memory is not None
                                  or args.memory is not None):
        return None
    return from_monitors(_gpu_pools(), env)


def _planned_devices(args: _Args, found: LlamaDevices | None) -> tuple[LlamaDevice, ...]:
    """The devices planned for (--gpus, else the names --memory gives, else the ones
    found), with the free memory the plan uses (--memory wins over what was found)."""
    from kvwall.monitors.llama_devices import LlamaDevice

    seen = {d.name: d for d in found.devices} if found is not None else {}
    order = list(seen)
    if args.gpus is not None:
        names = list(args.gpus)
    elif args.device_memory is not None:  # llama.cpp's order where it is known
        given = list(args.device_memory)
        names = [n for n in order if n in given] + [n for n in given if n not in seen]
    else:
        names = order
    devices = [seen.get(n) or LlamaDevice(n, "", None, None, "--gpus") for n in names]
    if args.device_memory is not None:
        devices = [replace(d, free_bytes=args.device_memory[d.name], source="--memory")
                   if d.name in args.device_memory else d for d in devices]
    elif args.memory is not None and devices:
        devices = [replace(d, free_bytes=share, source="--memory")
                   for d, share in zip(devices, _shares(args.memory, devices), strict=True)]
    return tuple(devices)


def _shares(total: int, devices: Sequence[LlamaDevice]) -> list[int]:
    """``total`` split over ``devices`` in proportion to their free memory (equally when
    any is unknown); the shares add up to ``total``."""
    free = [d.free_bytes for d in devices]
    weights = [f for f in free if f is not None and f > 0]
    if len(weights) != len(devices):
        weights = [1] * len(devices)
    shares = [total * w // sum(weights) for w in weights]
    shares[0] += total - sum(shares)
    return shares


def _free_words(devices: Sequence[LlamaDevice]) -> str:
    """Where the free GPU memory comes from: ``free GPU memory (Vulkan0: llama-server
    --list-devices)``; a monitor's figure is read now."""
    live = ("NVML", "amdgpu sysfs", "Apple")
    groups: dict[str, list[str]] = {}
    for d in devices:
        if d.free_bytes is not None:
            groups.setdefault(f"{d.source} now" if d.source in live else d.source, []).append(d.name)
    return "free GPU memory (" + "; ".join(
        f"{', '.join(names)}: {src}" for src, names in groups.items()) + ")"


def _detect_budget(args: _Args) -> _Budget:
    """The memory budget: --memory, else the free memory of the devices the server would
    see (its binary's --list-devices, or kvwall's monitors), else available host RAM."""
    found = _find_devices(args)
    devices = _planned_devices(args, found)
    names = tuple(d.name for d in devices)
    free = {d.name: d.free_bytes for d in devices if d.free_bytes is not None}
    every = free if names and len(free) == len(names) else None
    if args.device_memory is not None or args.memory is not None:
        total = args.memory if args.memory is not None else sum(
            args.device_memory.values() if args.device_memory else ())
        notes: tuple[str, ...] = ()
        if args.memory is not None and len(devices) > 1:
            notes = ("--memory shared by " + ", ".join(
                f"{d.name} {format_bytes(d.free_bytes)}" for d in devices)
                + " (in proportion to their free memory; equally when it is unknown)",)
        return _Budget(total, names, total, "--memory", devices, every, found, notes)
    from kvwall.monitors.hostmem import read_host_pool

    if names:
        known = [free[n] for n in names if n in free]
        if known:
            total = sum(known)
            return _Budget(total, names, total, _free_words(devices), devices, every, found)
        host = read_host_pool()
        return _Budget(host.available_bytes, names, None,
                       "available host RAM now (GPU memory unknown)", devices, None, found)
    # CPU-only: --fit compares against the host's total RAM (common/fit.cpp)
    host = read_host_pool()
    return _Budget(host.available_bytes, (), host.total_bytes, "available host RAM now",
                   (), None, found)


# ---------------------------------------------------------------------------
# output


def _device_free(budget: _Budget) -> Mapping[str, int] | None:
    """Free bytes per GPU the plan and the what-ifs are measured against: as detected,
    else the budget in equal shares (what the memory model assumes), else unknown."""
    if budget.device_free is not None or not budget.gpu_names or budget.fit_free_bytes is None:
        return budget.device_free
    return {g: budget.fit_free_bytes // len(budget.gpu_names) for g in budget.gpu_names}


def _fits(plan: MemoryPlan, budget: _Budget) -> bool:
    """Whether llama-server loads ``plan`` within the budget: in total, and each GPU in
    its free memory."""
    from kvwall.budget.memory.plan import fits_devices

    return plan.ok and fits_devices(plan, budget.memory_bytes, budget.gpu_names, _device_free(budget))


def _plan_object(model: ModelInfo, config: ServerConfig, plan: MemoryPlan,
                 rows: Sequence[WhatIf], budget: _Budget,
                 offload: Sequence[WhatIf] = ()) -> JsonObject:
    """The documented ``plan`` object (``docs/json-schema.md``)."""
    from kvwall.budget.cmdline.edit import render_command
    from kvwall.budget.cmdline.parse import TRAILING_TEXT_NOTE

    obj: JsonObject = {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "path": model.path,
            "name": model.name,
            "architecture": model.architecture,
            "n_layer": model.n_layer,
            "n_ctx_train": model.n_ctx_train,
            "file_weights_bytes": model.weights_bytes,
        },
        "command": render_command(config.command_line()),
        "config": _config_json(plan),
        "memory": _memory_json(budget),
        "budget": None,
        "devices": [],
        "assumptions": list(plan.assumptions),
        "errors": list(plan.errors),
        "warnings": [a for a in plan.assumptions if TRAILING_TEXT_NOTE in a],
        "what_if": [_what_if_json(row, model, budget) for row in rows],
        "offload": [_offload_json(row, model, budget) for row in offload],
        "placement": _placement_json(config, plan),
    }
    if plan.ok:
        _add_budget_json(obj, plan, budget)
    return obj


def _memory_json(budget: _Budget) -> JsonObject:
    """The budget, the devices planned for and where they come from, the build."""
    found = budget.found
    return {
        "budget_bytes": budget.memory_bytes,
        "source": budget.source,
        "gpu_names": list(budget.gpu_names),
        "devices": [
            {"name": d.name, "description": d.description or None,
             "total_bytes": d.total_bytes, "free_bytes": d.free_bytes, "source": d.source}
            for d in budget.devices
        ],
        "binary": found.binary if found is not None else None,
        "device_error": found.error if found is not None else None,
        "build_number": found.build_number if found is not None else None,
    }


def _placement_json(config: ServerConfig, plan: MemoryPlan) -> JsonObject | None:
    """Where llama-server puts the layers after --fit, and the command that pins it."""
    from kvwall.budget.cmdline.edit import render_command

    p = plan.placement
    if p is None or not plan.ok:
        return None
    pinned = dict(p.pinned)
    return {
        "n_gpu_layers": p.n_gpu_layers,
        "layers": [{"device": name, "n_layers": n} for name, n in p.layers],
        "cpu_expert_layers": list(p.cpu_expert_layers),
        "fit": p.fit,
        "summary": p.summary or None,
        "pinned": {k: list(v) if isinstance(v, tuple) else v for k, v in pinned.items()},
        "pinned_command": render_command(config.command_line(**pinned, fit=False)) if pinned else None,
    }


def _config_json(plan: MemoryPlan) -> JsonObject:
    return {
        "n_ctx": plan.n_ctx,
        "n_ctx_seq": plan.n_ctx_seq,
        "n_ctx_slot": plan.n_ctx_slot,
        "n_seq": plan.n_seq,
        "n_stream": plan.n_stream,
        "kv_unified": plan.kv_unified,
        "cache_type_k": plan.cache_type_k,
        "cache_type_v": plan.cache_type_v,
        "flash_attn": plan.flash_attn,
        "flash_attn_effective": plan.flash_attn_effective,
        "n_ubatch": plan.n_ubatch,
        "kv_cells_swa": plan.kv_cells_swa,
        "kv_layers": plan.kv_layers,
        "n_rs_seq": plan.n_rs_seq,
    }


def _add_budget_json(obj: JsonObject, plan: MemoryPlan, budget: _Budget) -> None:
    """A plan llama.cpp accepts: its totals, the fit against the budget, its devices."""
    from kvwall.budget.memory import budget_total

    used = budget_total(plan, budget.gpu_names)
    obj["budget"] = {
        "weights_bytes": plan.weights_bytes,
        "kv_bytes": plan.kv_bytes,
        "kv_k_bytes": plan.kv_k_bytes,
        "kv_v_bytes": plan.kv_v_bytes,
        "kv_swa_bytes": plan.kv_swa_bytes,
        "recurrent_bytes": plan.recurrent_bytes,
        "compute_bytes": plan.compute_bytes,
        "output_bytes": plan.output_bytes,
        "total_bytes": plan.total_bytes,
        "cache_ram_bytes": plan.cache_ram_bytes,
        "kv_bytes_per_cell": round(plan.kv_bytes_per_cell),
    }
    obj["memory"]["used_bytes"] = used
    obj["memory"]["fits"] = _fits(plan, budget)
    obj["memory"]["headroom_bytes"] = budget.memory_bytes - used
    obj["devices"] = [
        {
            "name": d.name,
            "is_host": d.is_host,
            "weights_bytes": d.weights_bytes,
            "kv_bytes": d.kv_bytes,
            "recurrent_bytes": d.recurrent_bytes,
            "compute_bytes": d.compute_bytes,
            "output_bytes": d.output_bytes,
            "total_bytes": d.total_bytes,
        }
        for d in plan.devices
    ]


def _what_if_json(row: WhatIf, model: ModelInfo, budget: _Budget) -> JsonObject:
    p = row.plan
    return {
        "label": row.label,
        "changes": dict(row.changes),
        "refused": row.refused,
        "error": p.errors[0] if p.errors else None,
        "cache_type_k": row.config.cache_type_k,
        "cache_type_v": row.config.cache_type_v,
        "n_seq": p.n_seq,
        "n_ctx": p.n_ctx if p.ok else None,
        "n_ctx_slot": p.n_ctx_slot if p.ok else None,
        "kv_bytes": p.kv_bytes if p.ok else None,
        "total_bytes": p.total_bytes if p.ok else None,
        "saves_bytes": row.saves_bytes if p.ok else None,
        "fits": _fits(p, budget),
        "max_ctx": row.max_ctx,
        "max_ctx_slot": _slot_ctx(row.max_ctx, p, model) if p.ok else 0,
        "command": row.command,
        "caveat": row.caveat,
        "device_saves": [{"name": name, "saves_bytes": b} for name, b in row.device_saves],
    }


def _offload_json(row: WhatIf, model: ModelInfo, budget: _Budget) -> JsonObject:
    """An offload row: a what-if row, its lever and where its layers go."""
    obj = _what_if_json(row, model, budget)
    p = row.plan.placement
    obj["lever"] = row.offload
    obj["n_gpu_layers"] = p.n_gpu_layers if p is not None else None
    obj["cpu_expert_layers"] = list(p.cpu_expert_layers) if p is not None else []
    return obj


def _slot_ctx(n_ctx: int, plan: MemoryPlan, model: ModelInfo) -> int:
    """The per-slot context a server started with ``-c n_ctx`` would report."""
    if n_ctx <= 0:
        return 0
    per = n_ctx if plan.kv_unified else n_ctx // max(1, plan.n_seq)
    return min(per, model.n_ctx_train) if model.n_ctx_train else per


def _write_text(out: TextIO, obj: JsonObject) -> None:
    """The readable plan: the model, its context, the buffers per device, the what-ifs."""
    m = obj["model"]
    w = out.write
    layers = f"{m['n_layer']} layer{'s' if m['n_layer'] != 1 else ''}"
    name, arch = sanitize(str(m["name"]), 200), sanitize(str(m["architecture"]), 100)
    w(f"{name} ({arch}, {layers}, trained context {m['n_ctx_train']})\n")
    w(f"  {obj['command']}\n\n")
    for warning in obj["warnings"]:
        w(f"WARNING: {warning}\n")
    if obj["warnings"]:
        w("\n")
    if obj["errors"]:
        w("llama.cpp would refuse this configuration:\n")
        for e in obj["errors"]:
            w(f"  {e}\n")
        _write_assumptions(out, obj)
        return
    _write_context(out, obj["config"])
    _write_devices(out, obj)
    _write_assumptions(out, obj)
    if obj["what_if"]:
        _write_what_if(out, obj)


def _write_assumptions(out: TextIO, obj: JsonObject) -> None:
    if obj["assumptions"]:
        out.write("\nassumptions:\n")
        for a in obj["assumptions"]:
            out.write(f"  - {a}\n")


def _write_context(out: TextIO, c: JsonObject) -> None:
    w = out.write
    if c["kv_unified"]:
        slots = (
            f"{c['n_seq']} slot{'s' if c['n_seq'] != 1 else ''} sharing one pool of {c['n_ctx']} cells; "
            f"each slot may use up to {c['n_ctx_slot']}"
        )
    else:
        slots = (
            f"{c['n_seq']} slot{'s' if c['n_seq'] != 1 else ''} x {c['n_ctx_seq']} cells "
            f"(n_ctx {c['n_ctx']}); each slot's context: {c['n_ctx_slot']}"
        )
    w(f"context: {slots}\n")
    fa = c["flash_attn"] + ("" if c["flash_attn"] != "auto" else (" (on)" if c["flash_attn_effective"] else " (off)"))
    swa = f", SWA cache {c['kv_cells_swa']} cells" if c["kv_cells_swa"] else ""
    w(f"KV cache: K {c['cache_type_k']}, V {c['cache_type_v']}, {c['kv_layers']} layer{'s' if c['kv_layers'] != 1 else ''}{swa}; "
      f"flash attention {fa}; micro-batch {c['n_ubatch']}\n\n")


def _write_devices(out: TextIO, obj: JsonObject) -> None:
    """The buffer table (MiB as llama.cpp logs them) and the verdict against the budget."""
    w = out.write
    cols = ("weights", "KV cache", "recurrent", "compute", "output", "total")
    keys = ("weights_bytes", "kv_bytes", "recurrent_bytes", "compute_bytes", "output_bytes", "total_bytes")
    w(f"  {'device':<10}" + "".join(f" {h:>12}" for h in cols) + "\n")
    for d in obj["devices"]:
        w(f"  {d['name']:<10}" + "".join(f" {format_bytes(d[k]):>12}" for k in keys) + "\n")
    b = obj["budget"]
    if len(obj["devices"]) > 1:
        w(f"  {'all':<10}" + "".join(f" {format_bytes(b[k]):>12}" for k in keys) + "\n")
    w("  (compute is an estimate; weights, KV and recurrent state are exact)\n")
    if b["cache_ram_bytes"]:
        ceiling = "no limit" if b["cache_ram_bytes"] < 0 else f"up to {format_bytes(b['cache_ram_bytes'])}"
        w(f"  plus the prompt cache (--cache-ram) in host RAM: {ceiling}, as prompts get cached\n")
    mem = obj["memory"]
    placement = obj["placement"]
    moved = placement is not None and placement["fit"] == "layers"
    verdict = ("fits" + (" as --fit places it" if moved else "")) if mem["fits"] else "DOES NOT FIT"
    w(f"\nbudget: {format_bytes(mem['budget_bytes'])} ({mem['source']}): {verdict}, "
      f"{format_bytes(abs(mem['headroom_bytes']))} {'left' if mem['fits'] else 'short'}\n")
    if placement is not None and placement["summary"]:
        w(f"placement: {placement['summary']}\n")


def _saves_text(r: JsonObject) -> str:
    """A row's memory against the plan: ``frees 2.00 MiB``, ``costs 4.00 MiB more``."""
    if r["label"] == "current" or r["saves_bytes"] == 0:
        return "-"
    if r["saves_bytes"] > 0:
        return f"frees {format_bytes(r['saves_bytes'])}"
    return f"costs {format_bytes(-r['saves_bytes'])} more"


def _write_what_if(out: TextIO, obj: JsonObject) -> None:
    """The what-if table (rows that fit the budget marked) and the commands to paste,
    then the offload table (GPU plans)."""
    w = out.write
    w(f"\nwhat if (largest context that fits in {format_bytes(obj['memory']['budget_bytes'])};"
      " * = fits):\n")
    w(f"  {'#':>2}   {'change':<28} {'KV cache':>11} {'total':>11}  {'memory':<20}"
      f" {'largest -c':>11}  per slot\n")
    for i, r in enumerate(obj["what_if"], 1):
        if r["refused"]:
            w(f"  {i:>2}   {r['label']:<28}  refused: {r['error']}\n")
            continue
        mark = "*" if r["fits"] else " "
        w(f"  {i:>2} {mark} {r['label']:<28} {format_bytes(r['kv_bytes']):>11}"
          f" {format_bytes(r['total_bytes']):>11}  {_saves_text(r):<20} {_best_text(r)}\n")
    fits = obj["memory"].get("fits", True)
    rows = [(i, r) for i, r in enumerate(obj["what_if"], 1) if not r["refused"]]
    first_offload = len(obj["what_if"]) + 1
    fitting_offload = [r for r in obj["offload"] if r["fits"]]
    if not fits:
        rows = [(i, r) for i, r in rows if r["fits"]]
        if rows:
            w("\n  commands that fit (context kept as now; a 'largest -c' value uses the room):\n")
        elif fitting_offload:
            w("\n  no cache or slot change fits; the offload rows marked * below do\n")
        else:
            w("\n  no what-if fits: lower -c (see 'largest -c') or free memory\n")
    else:
        w("\n  commands (context kept as now; use a 'largest -c' value to use the room):\n")
    if not fits and obj.get("fit_command"):
        w(f"   -  {obj['fit_command']}   (as given, with the largest -c that fits)\n")
    for i, r in rows:
        w(f"  {i:>2}  {r['command']}\n")
    if not fits and fitting_offload and rows:
        w(f"   (and the offload rows marked * below, from #{first_offload})\n")
    notes = _trade_offs(obj["what_if"], bool(obj["config"]["kv_unified"]))
    if notes:
        w("\n  trade-offs:\n")
        for key, text in notes.items():
            w(f"    {('fewer slots' if key == 'slots' else key) + ':':<13}{text}\n")
    if obj["offload"]:
        _write_offload(out, obj, first_offload)


def _best_text(r: JsonObject) -> str:
    """A row's 'largest -c' and 'per slot' columns."""
    best = str(r["max_ctx"]) if r["max_ctx"] else "none fits"
    per = str(r["max_ctx_slot"]) if r["max_ctx"] else "-"
    return f"{best:>11}  {per}"


def _gpu_columns(obj: JsonObject) -> list[str]:
    """The GPUs the offload table gives a 'freed' column each (all of them, up to three)."""
    names = list(obj["memory"]["gpu_names"])
    return names if len(names) <= 3 else []


def _freed_cells(r: JsonObject, gpus: Sequence[str]) -> str:
    """GPU memory freed (per GPU, else in total) and what the Host row takes on in exchange."""
    saves = {d["name"]: d["saves_bytes"] for d in r["device_saves"]}
    cells = [_signed(saves.get(g, 0), freed=True) for g in gpus]
    if not gpus:  # many GPUs: one column, in total
        cells = [_signed(r["saves_bytes"] or 0, freed=True)]
    cells.append(_signed(-saves.get("Host", 0), freed=False))
    return "".join(f" {c:>12}" for c in cells)


def _signed(n: int, *, freed: bool) -> str:
    """``4.59 GiB`` freed or ``-4.59 GiB`` (costs); the Host row as ``+4.59 GiB`` taken on."""
    if n == 0:
        return "-"
    if freed:
        return format_bytes(n) if n > 0 else f"-{format_bytes(-n)}"
    return f"+{format_bytes(n)}" if n > 0 else f"-{format_bytes(-n)}"


def _write_offload(out: TextIO, obj: JsonObject, first: int) -> None:
    """The offload rows: GPU memory each frees, the largest context, the command and its
    speed cost."""
    w = out.write
    gpus = _gpu_columns(obj)
    heads = [f"{g} freed" for g in gpus] or ["GPUs freed"]
    w(f"\noffload (what moving work to the CPU buys; largest context that fits in "
      f"{format_bytes(obj['memory']['budget_bytes'])}; * = fits; Host: what the Host row "
      "above holds more or less):\n")
    w(f"  {'#':>2}   {'change':<16}" + "".join(f" {h:>12}" for h in [*heads, "Host"])
      + f" {'largest -c':>11}  per slot\n")
    for i, r in enumerate(obj["offload"], first):
        if r["refused"]:
            w(f"  {i:>2}   {r['label']:<16}  refused: {r['error']}\n")
            continue
        mark = "*" if r["fits"] else " "
        w(f"  {i:>2} {mark} {r['label']:<16}{_freed_cells(r, gpus)} {_best_text(r)}\n")
    fits = obj["memory"].get("fits", True)
    shown = [(i, r) for i, r in enumerate(obj["offload"], first)
             if not r["refused"] and (fits or r["fits"])]
    if shown:
        w("\n  commands" + ("" if fits else " that fit") + " and their speed cost:\n")
    for i, r in shown:
        w(f"  {i:>2}  {r['command']}\n        {r['caveat']}\n")


def _trade_offs(what_if: Sequence[JsonObject], kv_unified: bool) -> dict[str, str]:
    """One line per cache type (and for fewer slots) saying what the change costs."""
    notes: dict[str, str] = {}
    for r in what_if:
        if r["refused"]:
            continue
        t = r["cache_type_v"]
        if t != "f16" and t not in notes:
            notes[t] = r["caveat"].split("; ")[0]
        if "n_parallel" in r["changes"] and "slots" not in notes:
            notes["slots"] = (
                "fewer requests served at a time"
                + ("; the shared pool keeps its size, each slot may use more of it"
                   if kv_unified else "; each slot keeps its context")
            )
    return notes


class _Failure(Exception):
    """A bad input found while loading: its one-line message and exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``kvwall plan``; returns the exit code (0 fits, 1 refused, 2 bad input, 3 does not fit)."""
    out = out or sys.stdout
    err = err or sys.stderr
    environ = os.environ if environ is None else environ
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _split_args(words, environ)
        if args.help:
            out.write(HELP)
            return EXIT_OK
        model, config, budget = _load(args)
    except (UsageError, _Failure) as exc:
        message = exc.message if isinstance(exc, _Failure) else str(exc)
        code = exc.code if isinstance(exc, _Failure) else EXIT_USAGE
        err.write(f"kvwall plan: {message}\n")
        if "--json" in words:  # a script reading stdout gets JSON, whatever happened
            out.write(json.dumps({"schema_version": SCHEMA_VERSION, "error": message,
                                  "exit_code": code}) + "\n")
        return code
    obj, ok = _plan_and_what_ifs(model, config, budget, args)
    try:
        if args.json:
            out.write(json.dumps(obj, indent=2) + "\n")
        else:
            _write_text(out, obj)
        out.flush()
    except BrokenPipeError:  # `kvwall plan ... | head`: the reader left, nothing to report
        _silence_stdout()
    if not ok:
        return EXIT_REFUSED
    return EXIT_OK if obj["memory"].get("fits", True) else EXIT_DOES_NOT_FIT


def _load(args: _Args) -> tuple[ModelInfo, ServerConfig, _Budget]:
    """The command line parsed, the model header read and the budget found.

    Raises:
        _Failure: what is wrong, in one line (exit code 2).
    """
    from kvwall.budget.cmdline.parse import parse_command_line
    from kvwall.budget.config import ConfigError
    from kvwall.budget.memory import LaunchError, check_command_line, check_model_file
    from kvwall.monitors.gguf import GGUFError, read_model

    try:
        config = parse_command_line(args.llama_argv, args.env)
        check_command_line(config)
    except (ConfigError, LaunchError) as exc:
        raise _Failure(str(exc)) from None
    if not config.model_path:
        hint = " (-hf downloads are not read; pass the local .gguf path)" if _has_hf(config) else ""
        raise _Failure(f"no model given: pass MODEL.gguf or -m MODEL.gguf{hint}")
    try:
        model = read_model(config.model_path)
    except GGUFError as exc:
        raise _Failure(sanitize(str(exc))) from None
    except OSError as exc:
        raise _Failure(f"cannot read {config.model_path}: {exc.strerror or exc}") from None
    try:
        check_model_file(model, config)
    except LaunchError as exc:
        raise _Failure(str(exc)) from None
    try:
        budget = _detect_budget(args)
    except Exception as exc:  # noqa: BLE001 - memory probing is best effort
        raise _Failure(f"cannot read free memory ({_one_line(str(exc))}); use --memory SIZE"
                       ) from None
    return model, config, budget


def _plan_and_what_ifs(model: ModelInfo, config: ServerConfig, budget: _Budget,
                       args: _Args) -> tuple[JsonObject, bool]:
    """The plan object (with what-ifs when llama.cpp accepts the plan) and whether it does."""
    from kvwall.budget.memory import plan_memory
    from kvwall.budget.whatif import offload_table, what_if_table

    device_free = _device_free(budget)
    plan = plan_memory(model, config, gpu_names=budget.gpu_names, free_bytes=budget.fit_free_bytes,
                       device_free=device_free)  # fmt: skip
    plan = replace(plan, assumptions=_assumptions(plan, config, budget, args.cmd_env))
    rows: list[WhatIf] = []
    offload: list[WhatIf] = []
    if plan.ok:
        rows = what_if_table(
            model, config, memory_bytes=budget.memory_bytes, gpu_names=budget.gpu_names,
            extra_cache_types=args.extra_types, device_free=device_free,
        )  # fmt: skip
        offload = offload_table(model, config, memory_bytes=budget.memory_bytes, gpu_names=budget.gpu_names,
                                device_free=device_free)  # fmt: skip
    obj = _plan_object(model, config, plan, rows, budget, offload)
    obj["fit_command"] = None
    if plan.ok and not obj["memory"]["fits"] and rows and rows[0].max_ctx > 0:
        from kvwall.budget.cmdline.edit import render_command

        obj["fit_command"] = render_command(config.command_line(n_ctx=rows[0].max_ctx))
    if args.cmd_env:  # the command lines must carry the environment they were given with
        prefix = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in args.cmd_env.items() if k != "LLAMA_API_KEY"
        )
        if prefix:
            obj["command"] = f"{prefix} {obj['command']}"
            for row in (*obj["what_if"], *obj["offload"]):
                row["command"] = f"{prefix} {row['command']}"
            if obj["placement"] and obj["placement"]["pinned_command"]:
                obj["placement"]["pinned_command"] = f"{prefix} {obj['placement']['pinned_command']}"
            if obj["fit_command"]:
                obj["fit_command"] = f"{prefix} {obj['fit_command']}"
    return obj, plan.ok


def _assumptions(plan: MemoryPlan, config: ServerConfig, budget: _Budget,
                 cmd_env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The plan's assumptions plus what the CLI assumed: environment, budget, devices."""
    assumptions = list(plan.assumptions)
    env_used = sorted(k for k in config.env if k != "LLAMA_API_KEY")
    if env_used:
        assumptions.insert(0, "applied from the environment: " + ", ".join(f"{k}={config.env[k]}" for k in env_used))
    if budget.source == "--memory" and config.n_ctx is None and config.fit:
        assumptions.append("--fit was modelled against --memory instead of this machine's memory")
    assumptions.extend(_device_assumptions(budget, cmd_env or {}))
    if not budget.gpu_names:
        assumptions.append("CPU-only: everything is in host RAM (use --gpus CUDA0 to plan for a GPU)")
    elif budget.fit_free_bytes is None:
        assumptions.append(
            "free GPU memory unknown here: the GPU rows are compared with available host RAM "
            "(pass --memory SIZE with the GPU's free memory)"
        )
    return tuple(dict.fromkeys(assumptions))


def _device_assumptions(budget: _Budget, cmd_env: Mapping[str, str]) -> list[str]:
    """Where the devices came from: the binary's list (and its build), or why not."""
    from kvwall.monitors.llama_devices import device_environment

    found = budget.found
    if found is None or (found.binary is None and not found.devices and found.error is None):
        return list(budget.notes)
    if found.error is not None:
        return [sanitize(f"{found.error}: devices from {found.source} instead", 300),
                *budget.notes]
    listed = "; ".join(
        sanitize(f"{d.name} {d.description}, {format_bytes(d.total_bytes)}"
                 + (f", {format_bytes(d.free_bytes)} free" if d.free_bytes is not None else ""),
                 200)
        for d in found.devices) or "no GPU"
    build = f" (llama.cpp b{found.build_number})" if found.build_number else ""
    env = device_environment(cmd_env)
    with_env = " with " + " ".join(f"{k}={v}" for k, v in env.items()) if env else ""
    out = [sanitize(f"devices from {found.source}{with_env}{build}: ", 300) + listed]
    if found.cached and budget.source != "--memory":
        out.append("free memory as of the cached answer (kvwall asks the binary again when it "
                   "or its device variables change, or after a day)")
    return out + list(budget.notes)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _has_hf(config: ServerConfig) -> bool:
    return any(a in ("-hf", "-hfr", "--hf-repo") or a.startswith("--hf-repo=") for a in config.argv)


def _one_line(text: str) -> str:
    return " ".join(text.split())
