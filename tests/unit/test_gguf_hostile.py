"""Hostile model files (issue 10): special files, crafted counts, files that change while
read, wrong-typed or negative sizes, escape sequences; and a fuzz test with a fixed budget."""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from gguf_builders import (
    VT,
    kv_array,
    kv_str,
    kv_u32,
    minimal_kv,
    pack_string,
    raw_gguf,
    write_gguf,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvwall.app.demo.tinymodels import write_model
from kvwall.app.headless.plan import main as plan_main
from kvwall.budget.engine import UNTRUSTED_MODEL_PATH_NOTE, Engine
from kvwall.monitors.gguf import GGUFError, read_model, reader
from kvwall.monitors.gguf.reader import (
    MAX_KV,
    MAX_STRING_ARRAY,
    MAX_STRINGS_TOTAL,
    MAX_TENSORS,
    parse_file,
)
from test_engine import snap, state

# Generous for a loaded 2-core CI machine; the real figures are tens of milliseconds.
TIME_BUDGET_S = 5.0
MEMORY_BUDGET = 64 << 20


def bounded(fn, *args):
    """``fn(*args)``'s GGUFError, checked to come within the time and memory budget."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(GGUFError) as e:
            fn(*args)
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < TIME_BUDGET_S, elapsed
    assert peak < MEMORY_BUDGET, peak
    return e.value


def returns_at_once(fn, *args):
    """Run ``fn`` in a daemon thread: a call that blocks (a FIFO) fails the test, not CI."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(TIME_BUDGET_S)
    assert not t.is_alive(), "the call blocked"
    return box


@pytest.fixture
def fifo(tmp_path) -> str:
    path = tmp_path / "f.gguf"
    os.mkfifo(path)
    return str(path)


# ---------------------------------------------------------------------------------------
# Special files are refused before a byte is read


def test_fifo_model_is_refused_at_once(fifo):
    box = returns_at_once(read_model, fifo)
    assert isinstance(box.get("error"), GGUFError)
    assert "not a regular file (a FIFO)" in str(box["error"])


def test_character_device_is_refused(tmp_path):
    with pytest.raises(GGUFError, match=r"character device"):
        read_model("/dev/zero")


def test_plan_with_a_fifo_model_says_so_and_exits(fifo):
    err = io.StringIO()
    box = returns_at_once(lambda: plan_main([fifo], environ={}, out=io.StringIO(), err=err))
    assert box.get("result") == 2
    assert "not a regular file" in err.getvalue()


def test_status_with_a_fifo_on_the_command_line_reports_it(fifo):
    box = returns_at_once(
        lambda: Engine().analyse(snap(state(["llama-server", "-m", fifo]))))
    (server,) = box["result"].servers  # type: ignore[attr-defined]
    assert any("not a regular file" in e for e in server.errors)


# ---------------------------------------------------------------------------------------
# A path the server reports is a claim, not an instruction


def test_model_path_from_the_server_is_not_opened(fifo):
    remote = state((), pid=None, url="http://127.0.0.1:9", props={"model_path": fifo})
    box = returns_at_once(lambda: Engine().analyse(snap(remote)))
    (server,) = box["result"].servers  # type: ignore[attr-defined]
    assert UNTRUSTED_MODEL_PATH_NOTE in server.notes
    assert server.model_path is None and not server.errors


def test_model_path_from_the_server_is_read_when_the_user_named_it(tmp_path):
    path = str(write_model("llama", tmp_path / "m.gguf"))
    remote = state((), pid=None, url="http://127.0.0.1:9", props={"model_path": path})
    (server,) = Engine(trusted_model_paths=[path]).analyse(snap(remote)).servers
    assert server.model_path == path and server.plan is not None
    assert UNTRUSTED_MODEL_PATH_NOTE not in server.notes


def test_command_line_model_wins_over_the_servers_claim(tmp_path, fifo):
    path = str(write_model("llama", tmp_path / "m.gguf"))
    server_state = state(["llama-server", "-m", path], props={"model_path": fifo})
    (server,) = Engine().analyse(snap(server_state)).servers
    assert server.model_path == path and server.plan is not None


# ---------------------------------------------------------------------------------------
# Crafted headers finish fast and small


def sparse(path: Path, head: bytes, size: int) -> str:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return str(path)


def test_three_million_keys(tmp_path):
    path = sparse(tmp_path / "k.gguf", raw_gguf(n_kv=3_000_000), 66_000_000)
    e = bounded(read_model, path)
    assert f"kvwall's limit of {MAX_KV}" in str(e)


def test_two_million_tensors(tmp_path):
    path = sparse(tmp_path / "t.gguf", raw_gguf(n_tensors=2_000_000), 80_000_000)
    e = bounded(read_model, path)
    assert f"kvwall's limit of {MAX_TENSORS}" in str(e)


def test_sparse_file_of_string_arrays(tmp_path):
    # 2 GiB claimed, a few KB on disk: arrays of empty strings whose bytes are a hole.
    count = MAX_STRING_ARRAY
    path = tmp_path / "s.gguf"
    n_arrays = (2 << 30) // (8 * count)
    with open(path, "wb") as f:
        f.write(raw_gguf(n_kv=n_arrays))
        for i in range(n_arrays):
            f.write(kv_array(f"a{i}", VT.STRING, count))
            f.seek(8 * count, os.SEEK_CUR)
        f.truncate(f.tell())
    assert path.stat().st_size >= 2 << 30
    e = bounded(read_model, str(path))
    assert f"more than {MAX_STRINGS_TOTAL} strings" in str(e)


def test_one_string_array_over_the_cap(tmp_path):
    head = raw_gguf([kv_array("a", VT.STRING, MAX_STRING_ARRAY + 1)])
    path = sparse(tmp_path / "a.gguf", head, 16 * MAX_STRING_ARRAY)
    e = bounded(read_model, path)
    assert f"at most {MAX_STRING_ARRAY}" in str(e)


def test_many_long_strings_decode_within_the_memory_budget(tmp_path):
    # 200 string values of 1 MiB each (a hole): only the first 16 MiB are decoded.
    path = tmp_path / "m.gguf"
    big = 1 << 20
    n = 200
    with open(path, "wb") as f:
        f.write(raw_gguf([kv_str("general.architecture", "llama"),
                          kv_u32("llama.context_length", 8), kv_u32("llama.embedding_length", 8),
                          kv_u32("llama.block_count", 1)], n_kv=4 + n))
        for i in range(n):
            f.write(pack_string(f"s{i}") + struct.pack("<IQ", VT.STRING, big))
            f.seek(big, os.SEEK_CUR)
        f.truncate(f.tell())
    tracemalloc.start()
    try:
        m = read_model(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.architecture == "llama" and peak < MEMORY_BUDGET, peak


# ---------------------------------------------------------------------------------------
# A file that changes while it is read: an error, never a SIGBUS


def test_file_truncated_while_its_header_is_read(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf", "llama", minimal_kv(),
                      tokens=[f"t{i}" for i in range(5000)])[0]
    calls = []

    def pread(fd: int, n: int, offset: int) -> bytes:
        calls.append(offset)
        if len(calls) == 2:
            os.truncate(path, 100)  # another process rewrites the model mid-read
        return os.pread(fd, n, offset)

    monkeypatch.setattr(reader, "WINDOW", 256)
    monkeypatch.setattr(reader, "READ_AHEAD", 256)  # several reads for a small file
    with pytest.raises(GGUFError, match=r"changed while it was read"):
        parse_file(str(path), pread=pread)


def test_a_header_that_takes_too_long_is_given_up(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf", "llama", minimal_kv(),
                      tokens=[f"t{i}" for i in range(5000)])[0]
    ticks = iter(range(0, 10_000, 4))  # a slow disk: every read takes 4 s
    monkeypatch.setattr(reader, "WINDOW", 256)
    monkeypatch.setattr(reader, "READ_AHEAD", 256)
    with pytest.raises(GGUFError, match=r"took over 10 s \(kvwall's limit\)"):
        parse_file(str(path), clock=lambda: float(next(ticks)))


# ---------------------------------------------------------------------------------------
# Types as llama.cpp checks them; no negative size ever


def test_negative_head_count_kv_is_refused(tmp_path):
    kv = minimal_kv(n_layer=2, **{"{arch}.attention.head_count_kv": ([4, -4], VT.ARRAY, VT.INT32)})
    path = write_gguf(tmp_path / "m.gguf", "llama", kv)[0]
    with pytest.raises(GGUFError, match=r"negative entry -4 \(layer 1\)"):
        read_model(str(path))


@pytest.mark.parametrize("vtype", [VT.INT32, VT.INT64, VT.INT8, VT.UINT64, VT.UINT16])
def test_key_length_of_a_type_llama_cpp_rejects(tmp_path, vtype):
    value = -64 if vtype in (VT.INT32, VT.INT64, VT.INT8) else 64
    kv = minimal_kv(**{"{arch}.attention.key_length": (value, vtype)})
    path = write_gguf(tmp_path / "m.gguf", "llama", kv)[0]
    with pytest.raises(GGUFError, match=r"llama.cpp reads it as a uint32"):
        read_model(str(path))


def test_plan_refuses_a_negative_size_instead_of_fitting(tmp_path):
    kv = minimal_kv(**{"{arch}.attention.key_length": (-64, VT.INT32)})
    path = write_gguf(tmp_path / "m.gguf", "llama", kv)[0]
    out, err = io.StringIO(), io.StringIO()
    assert plan_main([str(path)], environ={}, out=out, err=err) == 2
    assert "uint32" in err.getvalue() and "fits" not in out.getvalue()


def test_per_layer_array_of_a_type_llama_cpp_rejects(tmp_path):
    kv = minimal_kv(n_layer=2, **{"{arch}.attention.head_count_kv": ([4, 4], VT.ARRAY, VT.INT64)})
    path = write_gguf(tmp_path / "m.gguf", "llama", kv)[0]
    with pytest.raises(GGUFError, match=r"bool, int32 or uint32 only"):
        read_model(str(path))


# ---------------------------------------------------------------------------------------
# Text from a model never reaches the terminal raw, and errors stay short


def test_escape_sequences_in_the_name_are_shown_escaped(tmp_path):
    hostile = "tiny\x1b]0;owned\x07\x1b[2J\nkvwall: fits"
    path = write_gguf(tmp_path / "m.gguf", "llama", minimal_kv(**{"general.name": hostile}))[0]
    out, err = io.StringIO(), io.StringIO()
    plan_main([str(path), "--memory", "64G"], environ={}, out=out, err=err)
    text = out.getvalue() + err.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "tiny\\x1b]0;owned\\x07\\x1b[2J\\nkvwall: fits" in text


def test_the_app_planner_shows_the_name_escaped(tmp_path):
    from kvwall.widgets.viewmodels.planner import plan_html

    hostile = "tiny\x1b[2J\u202eevil"
    path = write_gguf(tmp_path / "m.gguf", "llama", minimal_kv(**{"general.name": hostile}))[0]
    page = plan_html(str(path), "", 64 << 30).html
    assert "\x1b" not in page and "\u202e" not in page and "tiny\\x1b[2J" in page


def test_a_huge_damaged_key_name_gives_a_short_error_line(tmp_path):
    head = raw_gguf([pack_string("k" * 60_000 + "\x1b[2J") + struct.pack("<I", 99)])
    path = sparse(tmp_path / "m.gguf", head, len(head) + 64)
    err = io.StringIO()
    assert plan_main([path], environ={}, out=io.StringIO(), err=err) == 2
    line = err.getvalue()
    assert len(line) < 700 and "more characters)" in line and "\x1b" not in line


# ---------------------------------------------------------------------------------------
# Fuzz: crafted counts and sizes, each read within the budget, only GGUFError

_counts = st.sampled_from([0, 1, 2, 7, 64, 65, 4096, 4097, MAX_STRING_ARRAY, 2**31, 2**63])
_vtypes = st.sampled_from([int(v) for v in VT] + [13, 99])


@st.composite
def _records(draw) -> bytes:
    key = draw(st.sampled_from(["general.name", "llama.context_length", "a", "k" * 300]))
    kind = draw(st.sampled_from(["u32", "str", "array", "raw"]))
    if kind == "u32":
        return kv_u32(key, draw(st.integers(0, 2**32 - 1)))
    if kind == "str":
        return kv_str(key, draw(st.text(max_size=30)))
    if kind == "array":
        return kv_array(key, draw(_vtypes), draw(_counts), draw(st.binary(max_size=64)))
    return draw(st.binary(max_size=64))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    records=st.lists(_records(), max_size=6),
    n_kv=st.one_of(st.none(), _counts),
    n_tensors=st.one_of(st.none(), _counts),
    tail=st.sampled_from([0, 4096, 1 << 24, 2 << 30]),
)
def test_fuzz_crafted_headers_stay_within_budget(tmp_path, records, n_kv, n_tensors, tail):
    head = raw_gguf(records, n_kv=n_kv, n_tensors=n_tensors)
    path = sparse(tmp_path / "fuzz.gguf", head, len(head) + tail)
    tracemalloc.start()
    start = time.monotonic()
    try:
        read_model(path)
    except GGUFError as e:
        assert path in str(e)
    finally:
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < TIME_BUDGET_S, elapsed
    assert peak < MEMORY_BUDGET, peak
