"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest
from kvwall.app.demo.realshapes import write_header
from kvwall.monitors.gguf import read_model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Llama-3.1-70B and Qwen3.6-35B-A3B at Q4_K_M, header only (removed afterwards: they
    claim tens of GB, sparse)."""
    root = tmp_path_factory.mktemp("shapes")
    yield {
        "70b": read_model(str(write_header("llama-3.1-70b", root / "llama-70b.gguf"))),
        "moe": read_model(str(write_header("qwen3.6-35b-a3b", root / "qwen3.6-35b-a3b.gguf"))),
    }
    for path in root.glob("*.gguf"):
        path.unlink()
