"""Header-only GGUFs of real shapes read like the real files: same tensors, types, sizes."""

from __future__ import annotations

import os

import gguf
import pytest
from kvwall.app.demo.q4_k_m import weight_order
from kvwall.app.demo.realshapes import SHAPES, header, write_header
from kvwall.monitors.gguf import read_model


@pytest.fixture
def folder(tmp_path):
    """A folder whose header files (hundreds of GB claimed, sparse) are removed afterwards."""
    yield tmp_path
    for path in tmp_path.glob("*.gguf"):
        path.unlink()


@pytest.mark.parametrize("key", list(SHAPES))
def test_header_claims_the_real_size_and_costs_almost_nothing_on_disk(folder, key):
    path = write_header(key, folder / f"{key}.gguf")
    model = read_model(str(path))  # kvwall's reader checks every tensor lies inside the file
    st = os.stat(path)
    assert st.st_blocks * 512 < 1 << 20  # a sparse hole, not gigabytes of zeros
    assert st.st_size >= model.weights_bytes > 10 * 10**9
    expected = header(key)
    assert [t.name for t in model.tensors] == weight_order(expected.tensors)
    assert {t.name: t.shape for t in model.tensors} == expected.tensors
    assert model.architecture == expected.arch
    assert model.file_type == "MOSTLY_Q4_K_M"


def test_gguf_py_reads_the_same_table(folder):
    path = write_header("llama-3.1-70b", folder / "l.gguf")
    ours = read_model(str(path))
    ref = gguf.GGUFReader(str(path))
    assert [(t.name, t.tensor_type.name.lower(), int(t.n_bytes)) for t in ref.tensors] == [
        (t.name, t.type_name, t.n_bytes) for t in ours.tensors
    ]
    assert ref.fields["llama.block_count"].contents() == ours.n_layer_all == 80


def test_the_hybrid_moe_has_kv_only_in_its_attention_layers(folder):
    model = read_model(str(write_header("qwen3.6-35b-a3b", folder / "q.gguf")))
    attention = [il for il, recurrent in enumerate(model.recurrent_layers) if not recurrent]
    assert attention == list(range(3, model.n_layer_all, 4))
    assert all(f"blk.{il}.attn_k.weight" in {t.name for t in model.tensors} for il in attention)
    assert model.n_expert == 256 and model.n_expert_used == 8


def test_deepseek_is_read_as_mla(folder):
    model = read_model(str(write_header("deepseek-v3", folder / "d.gguf")))
    assert model.is_mla and model.kv_lora_rank == 512
    assert (model.head_k, model.n_head_kv[0]) == (512 + 64, 1)  # the latent and the rope part


def test_unknown_shape_is_a_key_error(tmp_path):
    with pytest.raises(KeyError):
        write_header("llama-9000b", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
