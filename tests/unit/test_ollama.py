"""Ollama and llama-swap children: names from manifests and configs; advice as Ollama settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kvwall.budget.cmdline.edit import render_command
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.ollama_advice import managed_advice, ollama_advice, ollama_settings
from kvwall.budget.report import Advice
from kvwall.monitors import ollama
from kvwall.monitors.ollama import (
    blob_digest,
    is_ollama_child,
    llama_swap_child_name,
    llama_swap_model_ids,
    managed_child,
    manifest_name,
    ollama_model_names,
    ollama_name,
)

DIGEST = "a" * 64
OTHER = "b" * 64


def lay_out_models(root: Path, manifests: dict[str, str]) -> Path:
    """An Ollama models directory: manifests/<registry>/<ns>/<model>/<tag> and blobs/."""
    (root / "blobs").mkdir(parents=True)
    for rel, digest in manifests.items():
        path = root / "manifests" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": "sha256:" + "c" * 64, "size": 10},
            "layers": [
                {"mediaType": "application/vnd.ollama.image.template",
                 "digest": "sha256:" + "d" * 64, "size": 5},
                {"mediaType": "application/vnd.ollama.image.model",
                 "digest": f"sha256:{digest}", "size": 1000},
            ]}))
        (root / "blobs" / f"sha256-{digest}").write_bytes(b"GGUF")
    return root


def ollama_argv(models: Path, digest: str = DIGEST, *extra: str) -> list[str]:
    return ["/usr/lib/ollama/llama-server", "--model", str(models / "blobs" / f"sha256-{digest}"),
            "--port", "40123", "--host", "127.0.0.1", "--no-webui", "--offline",
            "-c", "8192", "-np", "2", "--log-verbosity", "4", *extra]


@pytest.mark.parametrize("rel, name", [
    ("registry.ollama.ai/library/llama3.2/3b", "llama3.2:3b"),
    ("registry.ollama.ai/me/coder/latest", "me/coder:latest"),
    ("hf.co/org/repo/Q4_K_M", "hf.co/org/repo:Q4_K_M"),
])
def test_manifest_names(rel, name):
    assert manifest_name(rel) == name


def test_blob_digest():
    assert blob_digest(f"/m/blobs/sha256-{DIGEST}") == f"sha256:{DIGEST}"
    assert blob_digest(f"/m/other/sha256-{DIGEST}") is None
    assert blob_digest("/m/blobs/model.gguf") is None


def test_names_from_manifests(tmp_path):
    models = lay_out_models(tmp_path / "models", {
        "registry.ollama.ai/library/qwen3/latest": DIGEST,
        "registry.ollama.ai/library/qwen3/8b": DIGEST,
        "registry.ollama.ai/library/gemma3/1b": OTHER,
    })
    (models / "manifests" / "registry.ollama.ai" / "library" / "broken").mkdir()
    (models / "manifests" / "registry.ollama.ai" / "library" / "broken" / "x").write_text("{")
    names = ollama_model_names(str(models))
    assert names[f"sha256:{DIGEST}"] == ["qwen3:8b", "qwen3:latest"]
    assert names[f"sha256:{OTHER}"] == ["gemma3:1b"]
    assert ollama_model_names(str(tmp_path / "missing")) == {}


def test_ollama_child_named_by_its_model(tmp_path):
    models = lay_out_models(tmp_path / "models", {
        "registry.ollama.ai/library/qwen3/latest": DIGEST,
        "registry.ollama.ai/library/qwen3/8b": DIGEST})
    got = ollama_name(ollama_argv(models))
    assert got is not None
    assert got.managed_by == "ollama" and got.model == "qwen3:8b"
    assert got.models_dir == str(models)


def test_ollama_child_without_a_manifest_is_still_marked(tmp_path):
    models = lay_out_models(tmp_path / "models", {})
    got = ollama_name(ollama_argv(models))
    assert got is not None and got.managed_by == "ollama" and got.model is None


def test_plain_servers_are_not_ollama(tmp_path):
    assert not is_ollama_child(["llama-server", "-m", "/models/qwen3.gguf"])
    assert not is_ollama_child([])
    # A blob path outside an Ollama layout, run by a plain llama-server.
    blob = tmp_path / "blobs" / f"sha256-{DIGEST}"
    assert not is_ollama_child(["/usr/bin/llama-server", "-m", str(blob)])
    (tmp_path / "manifests").mkdir()
    assert is_ollama_child(["/usr/bin/llama-server", "-m", str(blob)])


SWAP_CONFIG = """
healthCheckTimeout: 60
models:
  "qwen-coder":
    cmd: |
      llama-server --port ${PORT}
      -m /models/qwen2.5-coder-7b.gguf   # the coder
      -c 16384
  gemma:
    cmd: llama-server --port ${PORT} --model=/models/gemma.gguf -a gem
  broken:
    proxy: http://127.0.0.1:9999
"""


def test_llama_swap_config():
    ids = llama_swap_model_ids(SWAP_CONFIG)
    assert set(ids) == {"qwen-coder", "gemma"}
    assert ids["qwen-coder"][-2:] == ["-c", "16384"]
    assert llama_swap_model_ids("not: [yaml") == {}
    assert llama_swap_model_ids("- a list") == {}


def test_llama_swap_child_named_by_model_id():
    child = ["llama-server", "--port", "5800", "-m", "/models/qwen2.5-coder-7b.gguf", "-c", "16384"]
    parent = ["/usr/local/bin/llama-swap", "--config", "swap.yaml", "--listen", ":8080"]
    seen = []

    def read(path):
        seen.append(path)
        return SWAP_CONFIG

    got = llama_swap_child_name(child, parent, "/etc/llama-swap", read)
    assert got is not None and got.managed_by == "llama-swap" and got.model == "qwen-coder"
    assert seen == ["/etc/llama-swap/swap.yaml"]
    by_alias = ["llama-server", "-m", "/elsewhere/g.gguf", "-a", "gem"]
    assert llama_swap_child_name(by_alias, parent, None, read).model == "gemma"
    unreadable = llama_swap_child_name(child, parent, None, lambda p: None)
    assert unreadable is not None and unreadable.model is None
    assert llama_swap_child_name(child, ["bash"], None, read) is None


def test_managed_child_never_raises_for_a_parent():
    def gone():
        raise ProcessLookupError

    assert managed_child(["llama-server", "-m", "x.gguf"], gone) is None
    assert managed_child(["llama-server", "-m", "x.gguf"], lambda: None) is None


# ---------------------------------------------------------------------------- advice


def advice_for(argv: list[str], action: str, *edits: tuple[str, str]) -> Advice:
    edited = list(argv)
    for flag, value in edits:
        if flag in edited:
            edited[edited.index(flag) + 1] = value
        else:
            edited += [flag, value]
    return Advice(action, f"title {action}", 1 << 20, 16384, render_command(edited), "caveat")


def test_ollama_settings_replace_the_command(tmp_path):
    argv = ollama_argv(tmp_path, DIGEST, "--flash-attn", "off")
    config = parse_command_line(argv, {})
    items = [
        advice_for(argv, "cache-q8_0", ("--cache-type-k", "q8_0"), ("--cache-type-v", "q8_0"),
                   ("--flash-attn", "on")),
        advice_for(argv, "fewer-slots", ("-np", "1"), ("-c", "2048")),
        advice_for(argv, "kv-unified", ("--kv-unified", "")),
        advice_for(argv, "cache-ram", ("--cache-ram", "1024")),
    ]
    got = ollama_advice(items, config, "qwen3:8b")
    commands = {a.action: a.command for a in got.advice}
    assert commands["cache-q8_0"] == ("OLLAMA_FLASH_ATTENTION=1 OLLAMA_KV_CACHE_TYPE=q8_0 "
                                      "ollama serve")
    assert commands["fewer-slots"].startswith(
        "OLLAMA_NUM_PARALLEL=1 OLLAMA_CONTEXT_LENGTH=2048 ollama serve")
    assert "PARAMETER num_ctx 2048" in commands["fewer-slots"]
    assert set(commands) == {"cache-q8_0", "fewer-slots"}
    assert not any("llama-server" in c for c in commands.values())
    assert "managed by Ollama" in got.notes[0]
    assert "title kv-unified" in got.notes[1] and "title cache-ram" in got.notes[1]
    assert got.advice[0].saves_bytes == 1 << 20 and got.advice[0].max_ctx == 16384


def test_ollama_settings_minimal():
    current = parse_command_line(["llama-server", "-c", "8192", "-np", "2"], {})
    same = parse_command_line(["llama-server", "-c", "8192", "-np", "2"], {})
    assert ollama_settings(current, same) == []
    fa = parse_command_line(["llama-server", "-c", "8192", "-np", "2", "-fa", "on"], {})
    assert ollama_settings(current, fa) == ["OLLAMA_FLASH_ATTENTION=1"]


def test_managed_advice_by_manager():
    argv = ["llama-server", "-m", "/m/x.gguf", "-c", "8192"]
    items = [advice_for(argv, "cache-q8_0", ("-ctk", "q8_0"))]
    assert managed_advice(None, items, parse_command_line(argv, {}), None) is None
    swap = managed_advice("llama-swap", items, parse_command_line(argv, {}), "coder")
    assert swap.advice == tuple(items) and "`cmd` of model `coder`" in swap.notes[0]


def test_exports():
    assert set(ollama.__all__) <= set(dir(ollama))


# ---------------------------------------------------------------------------- discovery


def test_discovery_marks_managed_children(tmp_path):
    from kvwall.monitors.discovery import discover
    from test_discovery import FakeProcess, fake_psutil

    class Child(FakeProcess):
        def __init__(self, *a, parent=None, **kw):
            super().__init__(*a, **kw)
            self._parent = parent

        def parent(self):
            return self._parent

    models = lay_out_models(tmp_path / "models",
                            {"registry.ollama.ai/library/qwen3/8b": DIGEST})
    config = tmp_path / "swap.yaml"
    config.write_text(SWAP_CONFIG)
    swap = FakeProcess(300, ["/usr/bin/llama-swap", "--config", "swap.yaml"],
                       cwd=str(tmp_path))
    found = discover(fake_psutil(
        Child(100, ollama_argv(models)),
        Child(101, ["llama-server", "--port", "5800", "-m", "/models/qwen2.5-coder-7b.gguf"],
              parent=swap, ppid=300),
        Child(102, ["llama-server", "--port", "5801", "-m", "/models/plain.gguf"],
              parent=FakeProcess(1, ["/sbin/init"])),
    ))
    by_pid = {s.pid: s for s in found}
    assert (by_pid[100].managed_by, by_pid[100].managed_model) == ("ollama", "qwen3:8b")
    assert (by_pid[101].managed_by, by_pid[101].managed_model) == ("llama-swap", "qwen-coder")
    assert (by_pid[102].managed_by, by_pid[102].managed_model) == (None, None)
