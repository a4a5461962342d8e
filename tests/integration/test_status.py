"""``kvwall status`` against real llama-servers, a scripted agent, and misbehaving servers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from agent import ScriptedAgent
from fake_servers import DyingServer, GarbageServer, HangingServer
from kvwall.budget.engine import Engine
from kvwall.monitors.devices import MemorySources
from kvwall.monitors.discovery import Scanner
from kvwall.monitors.poller import Poller

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLI_TIMEOUT_S = 120  # a hang guard, not a performance check
API_KEY = "kvwall-test-key-5f2c"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    return subprocess.run([sys.executable, "-m", "kvwall.app", *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, env=env)


def status_json(*args: str) -> dict:
    done = run_cli("status", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def plan_config(argv: list[str]) -> dict:
    """What ``kvwall plan`` says for the same command line."""
    done = run_cli("plan", "--cmd", shlex.join(argv), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["config"]


def documented_status_fields() -> set[str]:
    """Field names of the ``status`` block of docs/json-schema.md."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "json-schema.md").read_text()
    block = doc[doc.index("## `kvwall status --json`"):]
    block = block[block.index("```") + 3:]
    block = block[: block.index("```")]
    names = set()
    for line in block.splitlines():
        # "  name   text", "  a, b, c   text", "cache_type_k, flash_attn ("on" | ...), n_ubatch"
        head = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        head = re.sub(r"\s*\([^)]*\)", "", head).strip()
        if re.fullmatch(r"[a-z_0-9]+(\[\])?(, [a-z_0-9]+(\[\])?)*", head):
            names.update(n.removesuffix("[]") for n in head.split(", "))
    # "{pid, used_bytes, name}", "devices[]{name, ...}", '{"f16": N, ...}'
    for group in re.findall(r"\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", block):
        names.update(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?=\s*[,}\[]|\s*$)", group + "}"))
        names.update(re.findall(r'"([a-z0-9_]+)":', group))
    return names


def json_keys(value, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    if isinstance(value, dict):
        for k, v in value.items():
            seen.add(k)
            json_keys(v, seen)
    elif isinstance(value, list):
        for v in value:
            json_keys(v, seen)
    return seen


def json_items(value):
    """Every (key, value) pair of a JSON document, nested ones included."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from json_items(v)
    elif isinstance(value, list):
        for v in value:
            yield from json_items(v)


def only(pids):
    """A discovery limited to the servers this test started (others may be running)."""
    pids = set(pids)
    scanner = Scanner()

    def discover(extra_urls=(), api_keys=None):
        found = scanner(extra_urls=extra_urls, api_keys=api_keys)
        return [s for s in found.servers if s.pid in pids]

    return discover


CONFIG_KEYS = ("n_ctx", "n_ctx_seq", "n_seq", "kv_unified", "cache_type_k", "cache_type_v")


def test_status_finds_every_server_with_its_configuration_and_slots(llama_server, tiny_model):
    split = llama_server(tiny_model("llama"), "-c", "1024", "-np", "1")
    quant = llama_server(tiny_model("qwen3"), "-c", "2048", "-np", "2",
                         "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on")
    swa_auto = llama_server(tiny_model("gemma3"), "-c", "1024")  # -np auto: 4 unified slots
    keyed = llama_server(tiny_model("qwen3"), "-c", "1024", "-np", "2", "-kvu",
                         "--api-key", API_KEY, api_key=API_KEY)
    # Issue 9: advice only for a problem in view: one server's slot runs full.
    full = llama_server(tiny_model("qwen3"), "-c", "512", "-np", "1")
    assert ScriptedAgent(full.url, n_predict=2000).turn().hit_wall
    servers = (split, quant, swa_auto, keyed, full)
    ScriptedAgent(split.url).turn()
    ScriptedAgent(split.url, seed=7).turn()
    assert ScriptedAgent(keyed.url, api_key=API_KEY, chat=True).turn().ok
    # A server a --watch recorded, then stopped: listed in stopped_servers[].
    gone = llama_server(tiny_model("llama"), "-c", "512", "-np", "1")
    recorded = run_cli("status", "--json", "--watch", "0.2", "--count", "1", "--url", gone.url)
    assert recorded.returncode == 0, recorded.stderr
    gone.stop()

    done = run_cli("status", "--json")
    assert done.returncode == 0, done.stderr
    assert API_KEY not in done.stdout and API_KEY not in done.stderr
    report = json.loads(done.stdout)
    assert report["schema_version"] == 1
    assert f"pid:{gone.pid}" in {s["key"] for s in report["stopped_servers"]}
    # The real output and docs/json-schema.md name the same fields, both ways.
    documented, printed = documented_status_fields(), json_keys(report)
    assert not printed - documented, f"undocumented fields: {sorted(printed - documented)}"
    assert not documented - printed, f"documented, never printed: {sorted(documented - printed)}"
    assert all(v is None or type(v) is int for k, v in json_items(report) if k.endswith("_bytes"))
    assert any(d["id"] == "host" and d["total_bytes"] > 0 for d in report["devices"])
    by_pid = {s["pid"]: s for s in report["servers"]}
    for srv in servers:
        assert srv.pid in by_pid, f"status did not find the server on port {srv.port}"
        got = by_pid[srv.pid]
        assert got["health"] == "ok", got["errors"]
        assert got["url"] == srv.url
        expected = plan_config(srv.argv)
        assert {k: got["config"][k] for k in CONFIG_KEYS} == {k: expected[k] for k in CONFIG_KEYS}
        # Each slot holds what the server counts (servers are idle now: nothing moves).
        slots = srv.get_json("/slots")
        assert [s["id"] for s in got["slots"]] == [s["id"] for s in slots]
        for mine, theirs in zip(got["slots"], slots, strict=True):
            assert mine["tokens"] == theirs.get("n_prompt_tokens", 0)
            assert mine["n_ctx"] == theirs["n_ctx"]
        memory = got["memory"]
        assert memory["measured_bytes"] > 0
        assert memory["kv_bytes"] == got["plan"]["kv_bytes"]
        parts = ("weights_bytes", "kv_bytes", "recurrent_bytes", "compute_bytes",
                 "overhead_bytes", "unattributed_bytes")
        assert sum(memory[p] for p in parts) == memory["measured_bytes"]
        assert set(got["max_ctx"]) >= {"f16"}
        for advice in got["advice"]:
            # Issue 9: a context fix may cost memory ("costs X more"); the others free it.
            assert advice["saves_bytes"] > 0 or advice["solves"] == "context"
            assert advice["command"].split()[0] == srv.argv[0]
    assert sum(s["tokens"] for s in by_pid[split.pid]["slots"]) > 0
    assert by_pid[swa_auto.pid]["pool"] is not None  # unified: the shared pool is reported
    assert by_pid[keyed.pid]["pool"]["tokens"] == sum(
        s.get("n_prompt_tokens", 0) for s in keyed.get_json("/slots"))
    for srv in (split, quant):
        assert by_pid[srv.pid]["pool"] is None
    # The key is never printed, even inside advice commands.
    assert all(API_KEY not in a["command"] for a in by_pid[keyed.pid]["advice"])


@pytest.mark.parametrize(
    ("chat", "flags"),
    [(False, ("-c", "1024", "-np", "1")), (True, ("-c", "2048", "-np", "2", "-kvu"))],
    ids=["completion-split", "chat-unified"],
)
def test_turns_left_within_one_turn_of_the_truth(llama_server, tiny_model, chat, flags):
    srv = llama_server(tiny_model("qwen3"), *flags)
    agent = ScriptedAgent(srv.url, chat=chat, id_slot=0)
    engine = Engine()
    forecasts: dict[int, tuple[int | None, int | None]] = {}  # turn -> (slot, pool) turns_left
    with Poller(MemorySources(), discover_fn=only([srv.pid])) as poller:

        def observe():
            (server,) = engine.analyse(poller.poll()).servers
            assert server.health == "ok", server.errors
            return server

        observe()  # before the first request
        wall_at = None
        for _ in range(40):
            turn = agent.turn()
            server = observe()
            if turn.hit_wall:
                wall_at = turn.index
                break
            assert turn.ok, turn
            slot = server.slots[0]
            assert slot.tokens == srv.get_json("/slots")[0]["n_prompt_tokens"]
            pool = server.pool.forecast.turns_left if server.pool is not None else None
            forecasts[turn.index] = (slot.forecast.turns_left, pool)
        assert wall_at is not None, "the agent never filled the slot"
    assert wall_at >= 6, "too few turns to judge a forecast: grow the context"
    for index, (slot_left, pool_left) in forecasts.items():
        truth = wall_at - index  # requests from here until (and including) the wall
        if index >= 3:
            assert slot_left is not None, f"no forecast after turn {index}"
            assert abs(slot_left - truth) <= 1, (index, slot_left, truth, forecasts)
            if "-kvu" in flags:
                assert abs(pool_left - truth) <= 1, (index, pool_left, truth, forecasts)


def test_watch_json_prints_one_object_per_poll(llama_server, tiny_model):
    srv = llama_server(tiny_model("llama"), "-c", "512", "-np", "1")
    done = run_cli("status", "--json", "--watch", "0.3", "--count", "3", "--url", srv.url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        obj = json.loads(line)
        assert srv.pid in {s["pid"] for s in obj["servers"]}


def test_text_view_shows_devices_servers_slots_and_advice(llama_server, tiny_model):
    srv = llama_server(tiny_model("qwen3"), "-c", "1024", "-np", "2", "-fa", "off")
    # Issue 9: advice only for a problem in view: slot 0 runs full.
    ScriptedAgent(srv.url, n_predict=2000, id_slot=0).turn()
    done = run_cli("status", "--url", srv.url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Host RAM" in out
    assert f"pid {srv.pid}" in out
    block = out[out.index(f"pid {srv.pid}"):]
    assert "#0" in block and "#1" in block
    # Issue 9: the advice solves the full slot, with the whole command line to paste.
    assert "solves context" in block and f"$ {srv.argv[0]} " in block
    assert "Traceback" not in out + done.stderr


def test_misbehaving_servers_are_reported_not_fatal():
    props = json.loads((FIXTURES / "http" / "props.json").read_text())["body"].encode()
    with HangingServer() as hang, GarbageServer() as garbage, DyingServer(props) as dying:
        report = status_json("--url", hang.url, "--url", garbage.url, "--url", dying.url,
                             "--deadline", "1")
        by_url = {s["url"]: s for s in report["servers"]}
        assert by_url[hang.url]["health"] == "not responding"
        assert by_url[garbage.url]["health"] == "error"
        assert by_url[dying.url]["health"] == "unreachable"
        for url in (hang.url, garbage.url, dying.url):
            assert by_url[url]["errors"], url
        hang.release.set()


def test_bad_arguments_are_one_line_errors():
    for args in (("--watch", "soon"), ("--api-key", "nokey"), ("--url", "ftp://x")):
        done = run_cli("status", *args)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def _wait_for(what: str, check, proc: subprocess.Popen, deadline_s: float = 60.0):
    """Poll ``check()`` until it returns something truthy; wait on ``proc`` in between."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the server exited while waiting for {what}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_router_and_its_child_model_server(llama_server, tmp_path):
    from kvwall.app.demo.tinymodels import write_model

    models = tmp_path / "models"
    models.mkdir()
    write_model("qwen3", models / "tiny-router-qwen3.gguf")
    router = llama_server(None, "--models-dir", str(models), "--models-max", "1",
                          "-c", "512", "-np", "1")
    children: list[psutil.Process] = []
    try:
        router.post_json("/models/load", {"model": "tiny-router-qwen3"})

        def child_ready():
            kids = psutil.Process(router.pid).children()
            children[:] = kids
            if not kids:
                return None
            report = status_json()
            by_pid = {s["pid"]: s for s in report["servers"]}
            kid = by_pid.get(kids[0].pid)
            return report if kid and kid["health"] == "ok" else None

        report = _wait_for("the router's child server", child_ready, router.proc)
        by_pid = {s["pid"]: s for s in report["servers"]}
        parent = by_pid[router.pid]
        assert parent["health"] == "router"
        assert any("router" in n for n in parent["notes"])
        assert not parent["errors"]
        kid = by_pid[children[0].pid]
        assert kid["name"] == "tiny-router-qwen3"
        expected = plan_config(children[0].cmdline())
        assert {k: kid["config"][k] for k in CONFIG_KEYS} == {k: expected[k] for k in CONFIG_KEYS}
        assert kid["config"]["n_ctx"] == 512 and kid["config"]["n_seq"] == 1
        assert kid["memory"]["measured_bytes"] > 0
    finally:
        router.stop()
        for child in children:  # the router stops its children; make sure of it
            try:
                child.wait(15)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                child.kill()


def test_server_killed_mid_poll_is_reported_by_the_engine(llama_server, tiny_model):
    srv = llama_server(tiny_model("llama"), "-c", "512", "-np", "1")
    scanner = Scanner()

    def discover_then_kill(extra_urls=(), api_keys=None):
        found = [s for s in scanner(extra_urls=extra_urls).servers if s.pid == srv.pid]
        assert found, "the server was not found before it was killed"
        srv.proc.kill()
        srv.proc.wait(15)
        return found

    with Poller(MemorySources(), discover_fn=discover_then_kill) as poller:
        report = Engine().analyse(poller.poll())
    (server,) = report.servers
    assert server.health == "unreachable"
    assert server.errors
    assert server.slots == ()
