"""Servers that a manager starts: Ollama's and llama-swap's llama-server children, named.

Ollama runs GGML models in an upstream ``lib/ollama/llama-server`` child whose ``--model``
is a content-addressed blob (``<models>/blobs/sha256-<hex>``); the model's name is found
from the manifests (``<models>/manifests/<registry>/<namespace>/<model>/<tag>``, JSON whose
model layer carries the blob's digest). llama-swap starts llama-server children from the
YAML file given to its ``--config``; a child is named by the model id whose ``cmd`` loads
the same model file. Pure file reads, no Qt; every reader returns None rather than raise.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

ManagedBy = Literal["ollama", "llama-swap"]

MANAGED_OLLAMA: ManagedBy = "ollama"
MANAGED_LLAMA_SWAP: ManagedBy = "llama-swap"

OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"

_BLOB_RE = re.compile(r"^sha256[-:]([0-9a-f]{64})$")
_MODEL_FLAGS = ("-m", "--model")
# Manifests are small; a bound keeps a hostile models directory from costing a poll.
_MAX_MANIFESTS = 10_000
_MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class ManagedName:
    """Who started a llama-server child, and the model name its manager uses.

    Attributes:
        managed_by: ``ollama`` or ``llama-swap``.
        model: the manager's model name (``llama3.2:3b``, a llama-swap model id), or None
            when the manager is known but the name could not be read.
        models_dir: Ollama's models directory (``OLLAMA_MODELS``), None for llama-swap.
    """

    managed_by: ManagedBy
    model: str | None
    models_dir: str | None = None


def _flag_value(argv: Sequence[str], names: Iterable[str]) -> str | None:
    """The last value of one of ``names`` (``-m X``, ``--model=X``)."""
    wanted = tuple(names)
    value: str | None = None
    for i, arg in enumerate(argv):
        flag, eq, rest = arg.partition("=")
        if flag in wanted:
            if eq:
                value = rest
            elif i + 1 < len(argv):
                value = argv[i + 1]
    return value


def blob_digest(model_path: str) -> str | None:
    """``sha256:<hex>`` for an Ollama blob path (``.../blobs/sha256-<hex>``), else None."""
    norm = model_path.replace("\\", "/").rstrip("/")
    parent, _, base = norm.rpartition("/")
    match = _BLOB_RE.match(base)
    if match is None or (not parent.endswith("/blobs") and parent != "blobs"):
        return None
    return f"sha256:{match.group(1)}"


def ollama_models_dir(model_path: str) -> str | None:
    """The models directory that holds the blob ``model_path``, None if not a blob."""
    if blob_digest(model_path) is None:
        return None
    return os.path.dirname(os.path.dirname(model_path.replace("\\", "/")))


def is_ollama_child(argv: Sequence[str]) -> bool:
    """True for Ollama's argv shape: a model that is a blob, run by a ``lib/ollama`` binary
    or with a ``manifests`` directory beside the blobs."""
    if not argv:
        return False
    model = _flag_value(argv[1:], _MODEL_FLAGS)
    if model is None or blob_digest(model) is None:
        return False
    exe = argv[0].replace("\\", "/")
    if "/ollama/" in exe or os.path.basename(exe).startswith("ollama"):
        return True
    models = ollama_models_dir(model)
    return models is not None and os.path.isdir(os.path.join(models, "manifests"))


def manifest_name(relative: str) -> str:
    """A manifest's path below ``manifests/`` as Ollama names the model.

    ``registry.ollama.ai/library/llama3.2/3b`` -> ``llama3.2:3b``;
    ``registry.ollama.ai/me/coder/latest`` -> ``me/coder:latest``;
    ``hf.co/org/repo/Q4_K_M`` -> ``hf.co/org/repo:Q4_K_M``.
    """
    parts = [p for p in relative.replace("\\", "/").split("/") if p]
    if len(parts) < 2:
        return relative
    *path, tag = parts
    if path and path[0] == DEFAULT_REGISTRY:
        path = path[1:]
        if path and path[0] == DEFAULT_NAMESPACE:
            path = path[1:]
    return "/".join(path) + ":" + tag


def _model_digest(text: str) -> str | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        return None
    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_MEDIA_TYPE:
            digest = layer.get("digest")
            return digest if isinstance(digest, str) else None
    return None


def _read_small(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_MANIFEST_BYTES + 1)
    except OSError:
        return None
    if len(data) > _MAX_MANIFEST_BYTES:
        return None
    return data.decode("utf-8", "replace")


def ollama_model_names(models_dir: str) -> dict[str, list[str]]:
    """Blob digest (``sha256:<hex>``) -> the model names whose manifests use it, sorted.

    Args:
        models_dir: Ollama's models directory (holds ``manifests/`` and ``blobs/``).

    Returns:
        The mapping; empty when the directory is missing or unreadable.
    """
    root = os.path.join(models_dir, "manifests")
    names: dict[str, list[str]] = {}
    seen = 0
    for dirpath, _dirs, files in os.walk(root):
        for file in files:
            seen += 1
            if seen > _MAX_MANIFESTS:
                break
            path = os.path.join(dirpath, file)
            text = _read_small(path)
            digest = _model_digest(text) if text is not None else None
            if digest is not None:
                names.setdefault(digest, []).append(manifest_name(os.path.relpath(path, root)))
    return {d: sorted(set(n)) for d, n in names.items()}


def ollama_name(argv: Sequence[str]) -> ManagedName | None:
    """Name an Ollama child llama-server from its argv; None when it is not one."""
    if not is_ollama_child(argv):
        return None
    model = _flag_value(argv[1:], _MODEL_FLAGS)
    assert model is not None  # is_ollama_child checked it
    models_dir = ollama_models_dir(model)
    digest = blob_digest(model)
    names = ollama_model_names(models_dir) if models_dir is not None else {}
    found = names.get(digest or "")
    # Two tags of one blob (``llama3.2:latest`` and ``llama3.2:3b``): the shortest reads best.
    best = min(found, key=lambda n: (len(n), n)) if found else None
    return ManagedName(MANAGED_OLLAMA, best, models_dir)


# ---------------------------------------------------------------------------- llama-swap


def _load_yaml(text: str) -> object:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        return None
    try:
        return yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - yaml.YAMLError and friends: an unreadable config
        return None


def _cmd_argv(cmd: object) -> list[str] | None:
    if isinstance(cmd, list):
        return [str(c) for c in cmd]
    if not isinstance(cmd, str):
        return None
    try:
        # llama-swap allows line continuations and comments in a multi-line cmd.
        lines = [ln.split(" #", 1)[0] for ln in cmd.replace("\\\n", " ").splitlines()
                 if not ln.lstrip().startswith("#")]
        return shlex.split(" ".join(lines))
    except ValueError:
        return None


def _same_file(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def llama_swap_model_ids(config_text: str) -> dict[str, list[str]]:
    """llama-swap model id -> the argv of its ``cmd``, from the YAML config text.

    Returns:
        The mapping; empty when the text is not a llama-swap config (or PyYAML is missing).
    """
    doc = _load_yaml(config_text)
    models = doc.get("models") if isinstance(doc, dict) else None
    out: dict[str, list[str]] = {}
    if not isinstance(models, dict):
        return out
    for model_id, entry in models.items():
        argv = _cmd_argv(entry.get("cmd")) if isinstance(entry, dict) else None
        if argv:
            out[str(model_id)] = argv
    return out


def llama_swap_name(argv: Sequence[str], models: Mapping[str, Sequence[str]]) -> str | None:
    """The llama-swap model id whose ``cmd`` runs the same model file (or alias) as ``argv``."""
    model = _flag_value(argv[1:], _MODEL_FLAGS)
    alias = _flag_value(argv[1:], ("-a", "--alias"))
    by_alias = None
    for model_id, cmd in models.items():
        their_model = _flag_value(cmd[1:], _MODEL_FLAGS)
        if model is not None and their_model is not None and _same_file(model, their_model):
            return model_id
        if alias is not None and _flag_value(cmd[1:], ("-a", "--alias")) == alias:
            by_alias = model_id
    return by_alias


def is_llama_swap(parent_argv: Sequence[str]) -> bool:
    """True when a parent process's command line is llama-swap's."""
    return bool(parent_argv) and os.path.basename(
        parent_argv[0].replace("\\", "/")).startswith("llama-swap")


def llama_swap_child_name(
    argv: Sequence[str], parent_argv: Sequence[str], parent_cwd: str | None,
    read_text: Callable[[str], str | None] = _read_small,
) -> ManagedName | None:
    """Name a llama-swap child; None when the parent is not llama-swap.

    Args:
        argv: the child's command line.
        parent_argv: llama-swap's command line (``--config`` names its YAML).
        parent_cwd: llama-swap's working directory (a relative ``--config``), if readable.
        read_text: reads the config file (injectable); None when unreadable.
    """
    if not is_llama_swap(parent_argv):
        return None
    config = _flag_value(parent_argv[1:], ("--config", "-config")) or "config.yaml"
    if not os.path.isabs(config) and parent_cwd:
        config = os.path.join(parent_cwd, config)
    text = read_text(config)
    model_id = llama_swap_name(argv, llama_swap_model_ids(text)) if text else None
    return ManagedName(MANAGED_LLAMA_SWAP, model_id)


def managed_child(
    argv: Sequence[str],
    parent: Callable[[], tuple[Sequence[str], str | None] | None],
) -> ManagedName | None:
    """Who manages a llama-server (Ollama, llama-swap), from its argv and its parent's.

    Args:
        argv: the server's command line.
        parent: returns the parent's (argv, cwd), None when unreadable; called only when
            the argv is not Ollama's.

    Returns:
        The manager and model name, or None for a server nobody manages.
    """
    managed = ollama_name(argv)
    if managed is not None:
        return managed
    try:
        up = parent()
    except Exception:  # noqa: BLE001 - a parent that vanished or is not ours
        return None
    if up is None:
        return None
    return llama_swap_child_name(argv, up[0], up[1])


__all__ = [
    "MANAGED_LLAMA_SWAP",
    "MANAGED_OLLAMA",
    "ManagedBy",
    "ManagedName",
    "blob_digest",
    "is_llama_swap",
    "is_ollama_child",
    "llama_swap_child_name",
    "llama_swap_model_ids",
    "llama_swap_name",
    "managed_child",
    "manifest_name",
    "ollama_model_names",
    "ollama_models_dir",
    "ollama_name",
]
