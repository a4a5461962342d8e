"""Discovery, HTTP and the poller against real llama-servers and misbehaving loopback servers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import psutil
import pytest
from agent import ScriptedAgent
from fake_servers import DyingServer, GarbageServer, HangingServer
from kvwall.app.demo.llamabin import find_llama_server
from kvwall.monitors.discovery import Discovery, scan
from kvwall.monitors.llama_http import LlamaClient
from kvwall.monitors.poller import ClientPool, Poller
from kvwall.monitors.snapshot import (
    HEALTH_ERROR,
    HEALTH_OK,
    HEALTH_ROUTER,
    HEALTH_TIMEOUT,
    HEALTH_UNAUTHORIZED,
    HEALTH_UNREACHABLE,
    DeviceMemory,
    MemorySnapshot,
    ServerProcess,
)

DEADLINE_S = 60.0
FIXTURES = Path(__file__).parents[1] / "fixtures" / "http"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mine(*pids: int, urls: tuple[str, ...] = ()):
    """A discover_fn over the real process table that keeps only this test's servers
    (other engineers' llama-servers may be running on the same machine)."""

    def discover_fn(extra_urls=(), api_keys=None) -> Discovery:
        d = scan(extra_urls=list(extra_urls) + list(urls), api_keys=api_keys)
        keep = tuple(s for s in d.servers if s.pid in pids or (s.pid is None and s.url in urls))
        return Discovery(servers=keep, notes=d.notes, errors=d.errors)

    return discover_fn


def find(pid: int) -> ServerProcess:
    found = [s for s in scan().servers if s.pid == pid]
    assert found, f"discovery did not find llama-server pid {pid}"
    assert len(found) == 1
    return found[0]


class FixedMemory:
    def poll(self) -> MemorySnapshot:
        return MemorySnapshot(timestamp=1.0, devices=(
            DeviceMemory(id="host", kind="host", name="Host RAM", unified=True,
                         total_bytes=100, used_bytes=40, free_bytes=60),))


def wait_for(predicate, what: str, proc: subprocess.Popen | None = None):
    """Poll ``predicate`` until truthy or the deadline; pauses by waiting on ``proc``."""
    import time

    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None:
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            else:
                pytest.fail(f"process exited while waiting for {what}")
    pytest.fail(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------- real servers


def test_discovers_two_slot_server_and_reads_its_slots(llama_server, tiny_model):
    srv = llama_server(tiny_model("llama"), "-np", "2", "-c", "1024")
    s = find(srv.pid)
    assert s.url == f"http://127.0.0.1:{srv.port}"
    assert s.source == "process" and s.name == "llama-server"
    assert "-np" in s.argv and s.rss_bytes and s.rss_bytes > 0

    srv.post_json("/completion", {"prompt": "hello world hello", "n_predict": 4, "id_slot": 1})
    with Poller(FixedMemory(), discover_fn=mine(srv.pid)) as poller:
        snap = poller.poll()
    assert snap.memory.devices[0].id == "host"
    (st,) = snap.servers
    assert st.health == HEALTH_OK, st.errors
    assert st.props["total_slots"] == 2
    assert [sl.n_ctx for sl in st.slots] == [512, 512]
    # The slot holds what the server counts (prompt + generated), the other is empty.
    truth = srv.get_json("/slots")
    assert [sl.n_tokens for sl in st.slots] == [x.get("n_prompt_tokens") for x in truth]
    assert st.slots[1].n_tokens and st.slots[1].n_tokens > 0 and st.slots[0].n_tokens is None
    assert st.model_meta["n_ctx_train"] == 4096


def test_api_key_from_argv_is_used_only_for_that_server(llama_server, tiny_model):
    key = "kvwall-integration-key"
    locked = llama_server(tiny_model("llama"), "-np", "1", "-c", "256", "--api-key", key)
    s = find(locked.pid)
    assert s.api_key == key
    assert key not in repr(s)

    without = LlamaClient(ServerProcess(url=s.url, pid=s.pid)).poll()
    assert without.health == HEALTH_UNAUTHORIZED
    with_key = LlamaClient(s).poll()
    assert with_key.health == HEALTH_OK, with_key.errors
    assert with_key.slots is not None and len(with_key.slots) == 1


def _start_own(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    full_env.update(env)
    with open(log, "wb") as f:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, env=full_env)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1.0) as r:
            return r.status == 200
    except OSError:
        return False


def test_unified_binary_with_port_from_environment(tmp_path, tiny_model):
    exe = Path(find_llama_server())
    llama = exe.with_name("llama")
    if not llama.is_file():
        pytest.skip("this llama.cpp build has no unified 'llama' binary")
    port = free_port()
    proc = _start_own([str(llama), "serve", "-m", str(tiny_model("llama")), "-c", "256",
                       "-np", "1"], {"LLAMA_ARG_PORT": str(port), "LLAMA_ARG_HOST": "0.0.0.0"},
                      tmp_path / "env.log")
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), "the env-configured server", proc)
        s = find(proc.pid)
        assert s.url == f"http://127.0.0.1:{port}"
        assert s.env.get("LLAMA_ARG_PORT") == str(port)
        assert s.argv[1] == "serve"
        assert LlamaClient(s).poll().health == HEALTH_OK
    finally:
        _stop(proc)


def test_router_and_its_child(tmp_path, tiny_model):
    from kvwall.app.demo.tinymodels import write_model

    models = tmp_path / "models"
    models.mkdir()
    write_model("qwen3", models / "tiny-qwen3.gguf")
    port = free_port()
    router = _start_own([find_llama_server(), "--host", "127.0.0.1", "--port", str(port),
                         "--models-dir", str(models), "--models-max", "1", "-c", "256", "-np", "1"],
                        {}, tmp_path / "router.log")
    url = f"http://127.0.0.1:{port}"
    child_pids: list[int] = []
    try:
        wait_for(lambda: _healthy(url), "the router", router)
        parent = find(router.pid)
        assert parent.source == "process"
        st = LlamaClient(parent).poll()
        assert st.health == HEALTH_ROUTER, st.errors
        assert [m["id"] for m in st.router_models] == ["tiny-qwen3"]
        assert st.slots is None

        req = urllib.request.Request(url + "/models/load", data=json.dumps(
            {"model": "tiny-qwen3"}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=DEADLINE_S):
            pass

        def child():
            kids = [s for s in scan().servers if s.parent_pid == router.pid]
            return kids and LlamaClient(kids[0]).poll().health == HEALTH_OK and kids[0]

        kid = wait_for(child, "the router's child server", router)
        child_pids.append(kid.pid)
        assert kid.source == "router-child"
        assert kid.pid in {p.pid for p in psutil.Process(router.pid).children()}
        # Its URL is the --port the router gave it, as the router reports it too.
        st = LlamaClient(parent).poll()
        (item,) = st.router_models
        assert item["status"]["value"] == "loaded"
        args = item["status"]["args"]
        assert kid.url == f"http://127.0.0.1:{args[args.index('--port') + 1]}"
        kid_state = LlamaClient(kid).poll()
        assert kid_state.health == HEALTH_OK and len(kid_state.slots) == 1
    finally:
        _stop(router)
        for pid in child_pids:  # the router stops its children; make sure of it
            try:
                p = psutil.Process(pid)
                p.wait(15)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                p.kill()


def test_server_killed_mid_poll(llama_server, tiny_model):
    srv = llama_server(tiny_model("llama"), "-np", "1", "-c", "256")
    real = mine(srv.pid)

    def discover_then_kill(extra_urls=(), api_keys=None):
        d = real()
        assert d.servers, "the server was not found before it was killed"
        srv.proc.kill()
        srv.proc.wait(15)
        return d

    with Poller(discover_fn=discover_then_kill) as poller:
        (st,) = poller.poll().servers
    assert st.health == HEALTH_UNREACHABLE
    assert any("Unreachable" in e for e in st.errors)
    with Poller(discover_fn=real) as poller:
        assert poller.poll().servers == ()  # vanished from the process table


# ---------------------------------------------------------------------------- misbehaving


def test_poll_finishes_on_deadline_and_reports_each_state(llama_server, tiny_model):
    good = llama_server(tiny_model("llama"), "-np", "1", "-c", "256")
    props = json.loads((FIXTURES / "props.json").read_text())["body"].encode()
    with HangingServer() as hang, GarbageServer() as garbage, DyingServer(props) as dying:
        urls = (hang.url, garbage.url, dying.url)
        # A read timeout longer than the hang server holds requests: only the poll's own
        # deadline can end the wait.
        pool = ClientPool(lambda p: LlamaClient(p, read_timeout=hang.limit_s * 2))
        with Poller(FixedMemory(), discover_fn=mine(good.pid, urls=urls), clients=pool,
                    deadline_s=2.0) as poller:
            snap = poller.poll()
            by_url = {s.process.url: s for s in snap.servers}
            assert set(by_url) == {good.url, *urls}

            assert by_url[good.url].health == HEALTH_OK
            assert by_url[hang.url].health == HEALTH_TIMEOUT
            assert any("no answer within 2 s" in e for e in by_url[hang.url].errors)
            assert by_url[garbage.url].health == HEALTH_ERROR
            assert any("not JSON" in e for e in by_url[garbage.url].errors)
            assert by_url[dying.url].health == HEALTH_UNREACHABLE
            assert dying.answered.is_set() and dying.died.is_set()  # it died mid-poll
            assert snap.memory.devices[0].used_bytes == 40

            # The poll returned while the hung request is still waiting in the background.
            hung_client = pool.get(by_url[hang.url].process)
            assert hang.hung.is_set() and hung_client.busy
            sent = len(hang.requests)

            # Next poll: no second request piles up on the hung server.
            snap2 = poller.poll()
            st = {s.process.url: s for s in snap2.servers}[hang.url]
            assert st.health == HEALTH_TIMEOUT
            assert any("previous request still running" in e for e in st.errors)
            assert len(hang.requests) == sent
            assert {s.process.url: s for s in snap2.servers}[dying.url].health == \
                HEALTH_UNREACHABLE
            hang.release.set()
            wait_for(lambda: not hung_client.busy, "the hung request to end")


def test_stuck_memory_source_does_not_stop_the_poll():
    import threading

    release = threading.Event()

    class Stuck:
        calls = 0

        def poll(self):
            Stuck.calls += 1
            release.wait(20)
            return MemorySnapshot(timestamp=0.0, devices=())

    with GarbageServer() as garbage:
        poller = Poller(Stuck(), discover_fn=mine(urls=(garbage.url,)), deadline_s=0.5)
        try:
            snap = poller.poll()
            assert snap.memory.errors and "did not answer" in snap.memory.errors[0]
            assert snap.servers[0].health == HEALTH_ERROR
            snap = poller.poll()
            assert Stuck.calls == 1  # not asked again while still stuck
        finally:
            release.set()
            poller.close()


def test_llama_cli_embedded_server_is_found_on_its_random_port(tmp_path, tiny_model):
    cli = Path(find_llama_server()).with_name("llama-cli")
    if not cli.is_file():
        pytest.skip("this llama.cpp build has no llama-cli")
    log = tmp_path / "cli.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    with open(log, "wb") as f:
        # stdin stays open and silent: the interactive prompt waits, its server runs.
        proc = subprocess.Popen([str(cli), "-m", str(tiny_model("llama")), "-c", "256"],
                                stdin=subprocess.PIPE, stdout=f, stderr=subprocess.STDOUT,
                                env=full_env)
    try:
        def found():
            hits = [s for s in scan().servers if s.pid == proc.pid]
            return hits and LlamaClient(hits[0]).poll().health == HEALTH_OK and hits[0]

        s = wait_for(found, "llama-cli's embedded server", proc)
        assert s.name == "llama-cli"
        port = int(s.url.rsplit(":", 1)[1])
        listening = {c.laddr.port for c in psutil.Process(proc.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert port in listening
        st = LlamaClient(s).poll()
        assert st.slots is not None and st.model_meta["n_ctx"] == 256
    finally:
        proc.stdin.close()
        _stop(proc)


def test_polling_does_not_keep_a_sleepy_server_awake(llama_server, tiny_model):
    # Each GET /slots restarts --sleep-idle-seconds; kvwall must let an idle server sleep,
    # and still follow it while it works.
    srv = llama_server(tiny_model("llama"), "-np", "1", "-c", "1024",
                       "--sleep-idle-seconds", "2")
    with Poller(FixedMemory(), discover_fn=mine(srv.pid)) as poller:
        # One poll every 0.1 s (waiting on the server process, which must not exit).
        (st,) = wait_for(lambda: [s for s in poller.poll().servers if s.health == "sleeping"],
                         "the watched server to fall asleep", srv.proc)
        assert st.slots is None
        assert ScriptedAgent(srv.url, n_predict=4).turn().ok  # wakes it
        (st,) = poller.poll().servers
        assert st.health == HEALTH_OK and st.slots[0].n_tokens > 0
