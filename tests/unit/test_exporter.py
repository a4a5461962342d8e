"""``kvwall exporter``: metric families, one shared poll, redaction, token, remotes, resources."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from kvwall.app.headless import exporter
from kvwall.app.headless.exporter import (
    ExporterConfig,
    SharedPoll,
    build_registry,
    make_server,
    parse_listen,
    refused_counts,
)
from kvwall.app.headless.remote_view import remote_text, with_remotes
from kvwall.monitors.llama_http import HttpResponse, TransportError
from kvwall.monitors.remote import RemoteReader, remote_base
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-key-9f81c2"
TOKEN = "exporter-token-4b7d21e0"
URL = "http://127.0.0.1:8080"


def status_obj() -> dict:
    """A status object as ``report_json`` builds it (the fields the exporter reads)."""
    return {
        "schema_version": 1, "time": 1_800_000_000.5,
        "devices": [
            {"id": "host", "kind": "host", "name": "Host RAM", "unified": True,
             "total_bytes": 64 << 30, "used_bytes": 20 << 30, "free_bytes": 44 << 30,
             "uuid": None},
            {"id": "nvidia:0", "kind": "nvidia", "name": "NVIDIA H100", "unified": False,
             "total_bytes": 80 << 30, "used_bytes": 30 << 30, "free_bytes": 50 << 30,
             "uuid": "GPU-3b84c06a-611d-8e07-2726-44a868f646fe"},
        ],
        "servers": [{
            "key": "pid:42", "pid": 42, "url": URL, "name": "qwen3", "health": "ok",
            "managed_by": None,
            "config": {"n_seq": 2, "kv_unified": False, "cache_type_k": "q8_0",
                       "cache_type_v": "q8_0", "flash_attn": "on"},
            "memory": {"kv_bytes": 3 << 30, "devices": [
                {"device_id": "nvidia:0", "measured_bytes": 25 << 30, "weights_bytes": 20 << 30,
                 "kv_bytes": 3 << 30, "recurrent_bytes": 0, "compute_bytes": 1 << 30,
                 "overhead_bytes": 1 << 30, "unattributed_bytes": 0, "note": None}]},
            "slots": [
                {"id": 0, "n_ctx": 4096, "tokens": 1000, "is_processing": False,
                 "forecast": {"turns_left": 6, "seconds_left": 120.5}},
                {"id": 1, "n_ctx": 4096, "tokens": 0, "is_processing": False,
                 "forecast": {"turns_left": None, "seconds_left": None}},
            ],
            "pool": None,
            "advice": [{"command": f"llama-server --api-key {KEY} -ctk q4_0"}],
            "errors": [],
        }],
        "pool_forecasts": [{"device_id": "nvidia:0", "seconds_left": 900.0},
                           {"device_id": "host", "seconds_left": None}],
        "errors": [],
    }


def snapshot(slots=(), build="b7000-abc") -> SimpleNamespace:
    state = SimpleNamespace(process=SimpleNamespace(url=URL), props={"build_info": build},
                            slots=tuple(slots))
    return SimpleNamespace(servers=(state,))


class FakeSession:
    """StatusSession's interface: poll() -> (obj, text, secrets), close()."""

    def __init__(self, obj: dict | None = None, secrets=(KEY,)) -> None:
        self.obj = obj or status_obj()
        self.secrets = set(secrets)
        self.polls = 0
        self.closed = False

    def poll(self):
        self.polls += 1
        return self.obj, "text", self.secrets

    def close(self) -> None:
        self.closed = True


class FakeCapture:
    def __init__(self, snap) -> None:
        self.last = snap


def families(shared: SharedPoll) -> dict:
    from prometheus_client import generate_latest

    text = generate_latest(build_registry(shared)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def samples(family, **labels) -> list:
    return [s for s in family.samples
            if all(s.labels.get(k) == v for k, v in labels.items())]


@pytest.fixture
def shared() -> SharedPoll:
    poll = SharedPoll(FakeSession(), FakeCapture(snapshot()))
    poll.poll_once()
    return poll


def test_device_memory_carries_join_labels(shared):
    fams, _ = families(shared)
    total = fams["kvwall_device_memory_total_bytes"]
    gpu = samples(total, device="nvidia:0")
    assert len(gpu) == 1
    assert gpu[0].labels == {"device": "nvidia:0", "name": "NVIDIA H100", "kind": "nvidia",
                             "uuid": "GPU-3b84c06a-611d-8e07-2726-44a868f646fe"}
    assert gpu[0].value == 80 << 30
    assert samples(fams["kvwall_device_memory_free_bytes"], device="host")[0].value == 44 << 30


def test_server_memory_by_component(shared):
    fams, _ = families(shared)
    memory = fams["kvwall_server_memory_bytes"]
    by_component = {s.labels["component"]: s.value for s in memory.samples}
    assert by_component == {"weights": 20 << 30, "kv": 3 << 30, "recurrent": 0,
                            "compute": 1 << 30, "overhead": 1 << 30, "unattributed": 0,
                            "measured": 25 << 30}
    assert {s.labels["server"] for s in memory.samples} == {URL}
    assert {s.labels["model"] for s in memory.samples} == {"qwen3"}


def test_slots_forecasts_and_pools(shared):
    fams, _ = families(shared)
    assert samples(fams["kvwall_slot_context_tokens"], slot="0")[0].value == 1000
    assert samples(fams["kvwall_slot_context_capacity_tokens"], slot="1")[0].value == 4096
    # Unknown forecasts are absent, not zero (zero would read as "full").
    assert [s.labels["slot"] for s in fams["kvwall_slot_turns_left"].samples] == ["0"]
    assert fams["kvwall_slot_seconds_left"].samples[0].value == 120.5
    pools = fams["kvwall_pool_seconds_left"].samples
    assert [(s.labels["device"], s.value) for s in pools] == [("nvidia:0", 900.0)]


def test_unified_pool_is_slot_pool():
    obj = status_obj()
    obj["servers"][0]["pool"] = {"id": -1, "n_ctx": 8192, "tokens": 1000,
                                 "forecast": {"turns_left": 3, "seconds_left": None}}
    poll = SharedPoll(FakeSession(obj))
    poll.poll_once()
    fams, _ = families(poll)
    assert samples(fams["kvwall_slot_context_capacity_tokens"], slot="pool")[0].value == 8192
    assert samples(fams["kvwall_slot_turns_left"], slot="pool")[0].value == 3


def test_server_info_labels_carry_the_configuration(shared):
    fams, _ = families(shared)
    info = fams["kvwall_server_info"]  # an info family: a gauge of 1 in the text format
    assert info.samples[0].value == 1.0
    labels = info.samples[0].labels
    assert labels == {"server": URL, "model": "qwen3", "ctk": "q8_0", "ctv": "q8_0",
                      "fa": "on", "np": "2", "kv_unified": "false", "build": "b7000-abc",
                      "managed_by": ""}
    assert samples(fams["kvwall_server_up"])[0].value == 1.0


def test_names_follow_prometheus_conventions(shared):
    fams, text = families(shared)
    names = {s.name for f in fams.values() for s in f.samples}
    assert all(n.startswith("kvwall_") and ":" not in n for n in names)
    for n in names:
        assert re.search(r"_(bytes|tokens|left|seconds|total|info|up)$", n), n
    assert "kvwall_server_refused_requests_total" in names
    assert "# TYPE kvwall_server_refused_requests_total counter" in text


def test_refusals_come_from_the_status_object():
    obj = {"servers": [{"url": URL, "refused_requests": {"count": 2, "last_time": 1.0}},
                       {"url": "http://127.0.0.1:9", "refused_requests": None}]}
    assert refused_counts(obj) == {URL: 2, "http://127.0.0.1:9": 0}


def test_a_failing_poll_is_served_as_an_error():
    class Broken(FakeSession):
        def poll(self):
            raise RuntimeError("boom")

    poll = SharedPoll(Broken())
    observation = poll.poll_once()
    assert observation.obj["errors"] == ["poll failed: RuntimeError: boom"]
    fams, _ = families(poll)
    assert fams["kvwall_poll_duration_seconds"].samples


# ---------------------------------------------------------------------------- HTTP


@pytest.fixture
def serve():
    started = []

    def start(session=None, token=None):
        poll = SharedPoll(session or FakeSession(), FakeCapture(snapshot()))
        poll.poll_once()
        server = make_server(ExporterConfig(poll, build_registry(poll), token, "box"),
                             "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}", poll

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def get(url: str, token: str | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def test_endpoints_and_no_key_anywhere(serve):
    base, _ = serve()
    status, metrics, headers = get(base + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "kvwall_server_memory_bytes" in metrics
    status, body, _ = get(base + "/status.json")
    obj = json.loads(body)
    assert obj["servers"][0]["url"] == URL
    assert "<redacted>" in obj["servers"][0]["advice"][0]["command"]
    status, index, _ = get(base + "/")
    assert status == 200 and "/metrics" in index and "/status.json" in index
    assert get(base + "/nope")[0] == 404
    for text in (metrics, body, index):
        assert KEY not in text


def test_key_in_a_label_is_redacted(serve):
    obj = status_obj()
    obj["servers"][0]["name"] = f"model-{KEY}"
    base, _ = serve(FakeSession(obj))
    _, metrics, _ = get(base + "/metrics")
    assert KEY not in metrics and 'model="model-<redacted>"' in metrics


def test_bearer_token(serve):
    base, _ = serve(token=TOKEN)
    for path in ("/metrics", "/status.json", "/"):
        status, body, headers = get(base + path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert get(base + path, "wrong-token-123")[0] == 401
        status, body, _ = get(base + path, TOKEN)
        assert status == 200 and TOKEN not in body


def test_ten_scrapers_share_one_poll(serve):
    base, poll = serve()
    session = poll.session
    before = session.polls
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: get(base + "/metrics")[0], range(30)))
    assert answers == [200] * 30
    assert session.polls == before  # scrapes read the shared result; only the loop polls


def test_poll_loop_runs_and_stops():
    session = FakeSession()
    poll = SharedPoll(session, interval_s=0.2)
    poll.start()
    assert poll.latest(wait_s=10) is not None
    poll.close()
    assert session.closed and not poll._thread.is_alive()


# ---------------------------------------------------------------------------- CLI


def test_listen_parsing():
    assert parse_listen(None) == ("127.0.0.1", exporter.DEFAULT_PORT)
    assert parse_listen("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_listen(":9100") == ("127.0.0.1", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    for bad in ("9100", "host:port", "h:70000"):
        with pytest.raises(exporter.UsageError):
            parse_listen(bad)


def test_usage_errors_exit_2(tmp_path, capsys):
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert exporter.main(["--listen", "nope"]) == 2
    assert exporter.main(["--token-file", str(empty)]) == 2
    assert exporter.main(["--token-file", str(tmp_path / "missing")]) == 2
    assert exporter.main(["--interval", "0"]) == 2
    assert exporter.main(["--url", "ftp://x"]) == 2
    err = capsys.readouterr().err
    assert err.count("kvwall exporter:") == 5 and "Traceback" not in err


def test_token_file_is_read_and_never_echoed(tmp_path, capsys):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert exporter.read_token(str(path)) == TOKEN
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(exporter.UsageError) as e:
        exporter.read_token(str(short))
    assert "abc" not in str(e.value)


def test_cli_never_imports_qt():
    code = ("import sys\n"
            "from kvwall.app.cli import main\n"
            "try:\n    main(['exporter', '--help'])\nexcept SystemExit:\n    pass\n"
            "import kvwall.app.headless.exporter, kvwall.app.headless.remote_view\n"
            "qt = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph')]\n"
            "assert not qt, qt\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--listen" in done.stdout and "--token-file" in done.stdout


# ---------------------------------------------------------------------------- remote


def transport_answering(status: int, body: bytes):
    calls = []

    def transport(url, headers, connect_timeout, read_timeout):
        calls.append((url, dict(headers), connect_timeout, read_timeout))
        return HttpResponse(status, body)

    transport.calls = calls
    return transport


def test_remote_base_forms():
    assert remote_base("gpu-box:9766") == "http://gpu-box:9766"
    assert remote_base("http://gpu-box:9766/") == "http://gpu-box:9766"
    assert remote_base("https://h/kvwall/status.json") == "https://h/kvwall"
    with pytest.raises(ValueError):
        remote_base("ftp://h")


def test_remote_up_sends_token_within_one_deadline():
    transport = transport_answering(200, json.dumps(status_obj()).encode())
    reader = RemoteReader("gpu-box:9766", TOKEN, deadline_s=1.5, transport=transport)
    got = reader.read()
    assert got.up and got.host == "gpu-box" and got.status["servers"][0]["name"] == "qwen3"
    url, headers, connect, read = transport.calls[0]
    assert url == "http://gpu-box:9766/status.json"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert (connect, read) == (1.5, 1.5)
    assert TOKEN not in repr(reader) and TOKEN not in repr(got)


@pytest.mark.parametrize("answer, words", [
    (TransportError("refused", "connection refused"), "is down"),
    (TransportError("timeout", "slow"), "did not answer within"),
    ((401, b"no"), "refused the token"),
    ((500, b"oops"), "HTTP 500"),
    ((200, b"<html>"), "not a kvwall status object"),
    ((200, b'{"schema_version": 2, "devices": [], "servers": []}'), "not a kvwall"),
])
def test_remote_down_is_never_fatal(answer, words):
    def transport(url, headers, connect_timeout, read_timeout):
        if isinstance(answer, Exception):
            raise answer
        return HttpResponse(*answer)

    got = RemoteReader("http://h:1", TOKEN, transport=transport).read()
    assert not got.up and words in got.error and got.status is None
    text = remote_text([got])
    assert "[down]" in text and TOKEN not in text


def test_status_with_remotes_against_a_real_exporter(serve):
    from kvwall.monitors.remote import RemoteGroup

    base, _ = serve(token=TOKEN)
    group = RemoteGroup([(base, TOKEN), ("http://127.0.0.1:9", TOKEN)], deadline_s=2)
    obj, text = with_remotes({"servers": []}, "local\n", group)
    up, down = obj["remotes"]
    assert up["up"] and up["servers"][0]["name"] == "qwen3"
    assert KEY not in json.dumps(obj)
    assert not down["up"] and down["servers"] == []
    assert "127.0.0.1: qwen3" in text and "[down]" in text


# ---------------------------------------------------------------------------- resources


def exported_names(shared: SharedPoll) -> set[str]:
    fams, _ = families(shared)
    return {s.name for f in fams.values() for s in f.samples}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bkvwall_[a-z_]+\b", expr))


def test_dashboard_structure(shared):
    dash = json.loads((ROOT / "resources" / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exported = exported_names(shared)
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for wanted in ("memory per device", "stacked by component", "slot fill", "wall",
                   "turns left"):
        assert wanted in titles
    stacked = [p for p in dash["panels"]
               if p["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {}).get("mode")
               == "normal"]
    assert any("component" in t["expr"] for p in stacked for t in p["targets"])
    for p in dash["panels"]:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = metric_names(t["expr"])
            assert names and names <= exported, (p["title"], names - exported)
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance"} <= variables


def test_alert_rules_use_exported_metrics(shared):
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((ROOT / "resources" / "prometheus-alerts.yml").read_text())
    exported = exported_names(shared)
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    for name in ("KvwallSlotAlmostFull", "KvwallPoolRunningOut", "KvwallRequestsRefused"):
        assert name in alerts
    for rule in alerts.values():
        assert metric_names(rule["expr"]) <= exported
        assert rule["annotations"]["summary"]


def test_ipv6_loopback_listener():
    poll = SharedPoll(FakeSession())
    poll.poll_once()
    server = make_server(ExporterConfig(poll, build_registry(poll)), "::1", 0)
    try:
        assert server.server_address[0] == "::1"
    finally:
        server.server_close()
