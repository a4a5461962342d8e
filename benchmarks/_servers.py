"""Start and stop a few tiny llama-servers for the benchmarks (bounded, always cleaned up)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from kvwall.app.demo.llamabin import INSTALL_HINT, find_llama_server
from kvwall.app.demo.tinymodels import write_model

START_DEADLINE_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1.0) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def tiny_servers(count: int, args: Sequence[str] = ("-c", "512", "-np", "2"),
                 kind: str = "qwen3") -> Iterator[list[tuple[subprocess.Popen, str]]]:
    """``count`` llama-servers on one tiny model: yields [(process, url)], stops them after."""
    exe = find_llama_server()
    if exe is None:
        raise SystemExit(INSTALL_HINT)
    procs: list[tuple[subprocess.Popen, str]] = []
    with tempfile.TemporaryDirectory(prefix="kvwall-bench-") as tmp:
        model = write_model(kind, Path(tmp) / f"bench-{kind}.gguf")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
        try:
            for _ in range(count):
                port = _free_port()
                argv = [exe, "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                        "-t", "1", *args]
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env=env)
                procs.append((proc, f"http://127.0.0.1:{port}"))
            deadline = time.monotonic() + START_DEADLINE_S
            for proc, url in procs:
                while not _healthy(url):
                    if proc.poll() is not None:
                        raise SystemExit(f"llama-server exited ({proc.returncode}) at {url}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"llama-server at {url} not healthy in time")
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.1)
            yield procs
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc, _ in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
