"""``kvwall exporter`` scraped every second by a real Prometheus server (Debian's package).

A real llama-server runs with ``--api-key``; the exporter finds it by process scan (and its
key from its command line), Prometheus scrapes the exporter with a bearer token, and the
test asks Prometheus what it stored: the target is up, the KV bytes PromQL returns equal
``kvwall status --json``'s, and the key appears nowhere. ``promtool`` checks the alert
rules. ``kvwall status --remote`` reads the same exporter from "another machine".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "resources" / "prometheus-alerts.yml"
API_KEY = "kvwall-prom-test-key-71c3"
TOKEN = "kvwall-exporter-token-0d9e5a"
DEADLINE_S = 90.0  # hang guards, not performance checks
CLI_TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="needs Debian's prometheus package (bootstrap.sh test)")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}


def http_get(url: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


def wait_for(what: str, check: Callable[[], Any], proc: subprocess.Popen,
             deadline_s: float = DEADLINE_S) -> Any:
    """Poll ``check`` until it returns something truthy; the pause is a wait on ``proc``
    (the process the answer depends on), which returns at once if it exits."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        try:
            proc.wait(timeout=0.25)
        except subprocess.TimeoutExpired:
            pass
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Exporter:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def exporter(tmp_path) -> Iterator[Exporter]:
    token_file = tmp_path / "exporter.token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    log_path = tmp_path / "exporter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvwall.app", "exporter", "--listen", f"127.0.0.1:{port}",
             "--token-file", str(token_file), "--interval", "0.5"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    ex = Exporter(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_for("the exporter", lambda: http_get(ex.url + "/", TOKEN)[0] == 200, proc)
        yield ex
    finally:
        _stop(proc)



def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)

@dataclass
class Prometheus:
    proc: subprocess.Popen
    url: str

    def query(self, promql: str) -> list[dict]:
        status, body = http_get(self.url + "/api/v1/query?" +
                                urllib.parse.urlencode({"query": promql}))
        if status != 200:
            return []
        return json.loads(body)["data"]["result"]


@pytest.fixture
def prometheus(tmp_path, exporter) -> Iterator[Prometheus]:
    token_file = tmp_path / "scrape.token"
    token_file.write_text(TOKEN)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {ALERTS}\n"
        "scrape_configs:\n  - job_name: kvwall\n"
        f"    authorization:\n      credentials_file: {token_file}\n"
        f"    static_configs:\n      - targets: ['{exporter.url.removeprefix('http://')}']\n")
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(proc, f"http://127.0.0.1:{port}")
    try:
        wait_for("Prometheus ready", lambda: http_get(prom.url + "/-/ready")[0] == 200, proc)
        yield prom
    finally:
        _stop(proc)


def status_json(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "kvwall.app", "status", "--json", *args],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert API_KEY not in done.stdout + done.stderr
    return json.loads(done.stdout)


def test_prometheus_scrapes_the_exporter(llama_server, tiny_model, exporter, prometheus):
    server = llama_server(tiny_model("llama"), "-c", "1024", "-np", "2", "--api-key", API_KEY,
                          api_key=API_KEY)
    selector = f'server="{server.url}"'
    up = wait_for("target up", lambda: prometheus.query('up{job="kvwall"} == 1'),
                  prometheus.proc)
    assert up[0]["metric"]["instance"] == exporter.url.removeprefix("http://")
    kv_query = f'sum(kvwall_server_memory_bytes{{component="kv", {selector}}})'
    stored = wait_for("KV bytes in Prometheus", lambda: prometheus.query(kv_query),
                      prometheus.proc)
    ours = [s for s in status_json()["servers"] if s["url"] == server.url]
    assert len(ours) == 1 and ours[0]["memory"]["kv_bytes"] > 0
    assert float(stored[0]["value"][1]) == ours[0]["memory"]["kv_bytes"]

    # The configuration and the slots made it too.
    info = prometheus.query(f"kvwall_server_info{{{selector}}}")
    assert info and info[0]["metric"]["np"] == "2"
    slots = prometheus.query(f"kvwall_slot_context_capacity_tokens{{{selector}}}")
    assert sorted(r["metric"]["slot"] for r in slots) == ["0", "1"]
    assert prometheus.query("kvwall_device_memory_total_bytes")
    rules = json.loads(http_get(prometheus.url + "/api/v1/rules")[1])["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {"KvwallSlotAlmostFull",
                                                             "KvwallPoolRunningOut",
                                                             "KvwallRequestsRefused"}

    # The key appears nowhere: served pages, Prometheus's stored series, the logs.
    served = [http_get(exporter.url + p, TOKEN)[1] for p in ("/", "/metrics", "/status.json")]
    series = http_get(prometheus.url + "/api/v1/series?" + urllib.parse.urlencode(
        {"match[]": '{__name__=~"kvwall_.+"}'}))[1]
    labels = http_get(prometheus.url + "/api/v1/targets")[1]
    assert server.url in served[1] and server.url in series
    for text in (*served, series, labels, exporter.log()):
        assert API_KEY not in text and TOKEN not in text
    # Without the token the exporter serves nothing.
    assert http_get(exporter.url + "/metrics")[0] == 401


def test_status_remote_lists_the_exporters_servers(llama_server, tiny_model, exporter,
                                                   tmp_path):
    server = llama_server(tiny_model("llama"), "-c", "512", "--api-key", API_KEY,
                          api_key=API_KEY)

    def remote_lists_it() -> dict | None:
        obj = status_json("--remote", exporter.url, "--remote-token-file",
                          str(tmp_path / "exporter.token"))
        remote = obj["remotes"][0]
        return obj if any(s["url"] == server.url for s in remote["servers"]) else None

    obj = wait_for("the remote's servers", remote_lists_it, exporter.proc)
    remote = obj["remotes"][0]
    assert remote["up"] and remote["host"] == "127.0.0.1" and remote["devices"]
    done = subprocess.run(
        [sys.executable, "-m", "kvwall.app", "status", "--remote", exporter.url,
         "--remote-token-file", str(tmp_path / "exporter.token"), "--remote", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert f"Remote 127.0.0.1  {exporter.url}" in done.stdout
    assert "[down]" in done.stdout  # a remote that is down is shown as down, never fatal
    for text in (done.stdout, done.stderr):
        assert TOKEN not in text and API_KEY not in text


def test_promtool_checks_the_alert_rules():
    if shutil.which("promtool") is None:
        pytest.skip("needs promtool (Debian's prometheus package)")
    done = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
