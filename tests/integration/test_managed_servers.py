"""Servers that Ollama and llama-swap start: the real llama-server, run the way they run it.

Ollama: the binary is run from ``<tmp>/lib/ollama/llama-server`` with Ollama's argv shape,
its model a blob of a models directory laid out as Ollama lays it out (manifest JSON, the
GGUF as ``blobs/sha256-<digest>``). llama-swap: a parent process whose command line is
``llama-swap --config <yaml>`` starts the child. ``kvwall status --json`` must name each by
its manager's model name, mark who manages it, and (Ollama) give Ollama settings, never a
llama-server command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from agent import ScriptedAgent
from ports import free_port

START_DEADLINE_S = 60.0
CLI_TIMEOUT_S = 120


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}


def ollama_models(root: Path, gguf: Path, name: str, tag: str) -> Path:
    """``root`` laid out as Ollama's models directory, holding ``gguf`` as ``name:tag``."""
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True)
    blob = root / "blobs" / f"sha256-{digest}"
    blob.write_bytes(data)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(), "size": 2},
        "layers": [{"mediaType": "application/vnd.ollama.image.model",
                    "digest": f"sha256:{digest}", "size": len(data)}],
    }))
    return blob


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if healthy(port):
            return
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
    pytest.fail(f"server not healthy after {START_DEADLINE_S} s")


@pytest.fixture
def spawn(tmp_path) -> Iterator:
    started: list[subprocess.Popen] = []

    def start(argv: list[str], port: int) -> subprocess.Popen:
        log = tmp_path / f"server-{port}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.STDOUT, env=clean_env())
        started.append(proc)
        wait_healthy(proc, port, log)
        return proc

    yield start
    for proc in started:
        # A wrapper's child first (llama-swap's), then the wrapper.
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            child.terminate()
        psutil.wait_procs(children, timeout=15)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def status_servers() -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "kvwall.app", "status", "--json"],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                          env=clean_env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["servers"]


def test_ollama_child_is_named_and_advised_in_ollama_settings(
        tmp_path, tiny_model, llama_server_exe, spawn):
    blob = ollama_models(tmp_path / "models", tiny_model("llama"), "tinyllama", "latest")
    exe = tmp_path / "lib" / "ollama" / "llama-server"
    exe.parent.mkdir(parents=True)
    exe.symlink_to(llama_server_exe)
    port = free_port()
    # Ollama's argv shape (ollama/ollama, Aug 2026): -c is num_ctx x np.
    argv = [str(exe), "--model", str(blob), "--port", str(port), "--host", "127.0.0.1",
            "--no-webui", "--offline", "-c", str(512 * 2), "-np", "2",
            "--log-verbosity", "4", "--flash-attn", "off"]
    proc = spawn(argv, port)
    # Issue 9: advice only for a problem in view: slot 0 runs full.
    ScriptedAgent(f"http://127.0.0.1:{port}", n_predict=2000, id_slot=0).turn()

    ours = [s for s in status_servers() if s["pid"] == proc.pid]
    assert len(ours) == 1, "the Ollama child was not found"
    server = ours[0]
    assert server["name"] == "tinyllama:latest"
    assert server["managed_by"] == "ollama"
    assert any("managed by Ollama" in n for n in server["notes"])
    assert server["advice"], "expected a KV-cache suggestion for a 32k-cell cache"
    for advice in server["advice"]:
        assert advice["command"].startswith("OLLAMA_"), advice["command"]
        assert "ollama serve" in advice["command"]
        assert "llama-server" not in advice["command"] and "--" not in advice["command"]
    commands = " ".join(a["command"] for a in server["advice"])
    assert "OLLAMA_KV_CACHE_TYPE=q8_0" in commands
    assert "OLLAMA_FLASH_ATTENTION=1" in commands


def test_llama_swap_child_is_named_by_its_model_id(tmp_path, tiny_model, llama_server_exe,
                                                   spawn):
    model = tiny_model("llama")
    port = free_port()
    child = [llama_server_exe, "--port", str(port), "--host", "127.0.0.1", "-m", str(model),
             "-c", "512"]
    config = tmp_path / "llama-swap.yaml"
    config.write_text("models:\n  tiny-chat:\n    cmd: |\n"
                      f"      {llama_server_exe} --port ${{PORT}}\n"
                      f"      -m {model} -c 512\n")
    # A parent whose command line is llama-swap's (``exec -a`` names it), starting the child
    # and waiting for it, as llama-swap does.
    script = f"{shlex.join(child)} & wait"
    parent = ["bash", "-c", f'exec -a /opt/llama-swap/llama-swap bash -c {shlex.quote(script)}'
              f" llama-swap --config {shlex.quote(str(config))}"]
    proc = spawn(parent, port)
    assert psutil.Process(proc.pid).cmdline()[0] == "/opt/llama-swap/llama-swap"

    ours = [s for s in status_servers() if s["url"] == f"http://127.0.0.1:{port}"]
    assert len(ours) == 1
    assert ours[0]["name"] == "tiny-chat"
    assert ours[0]["managed_by"] == "llama-swap"
    assert any("llama-swap" in n and "tiny-chat" in n for n in ours[0]["notes"])
