"""Remote machines in the local report: a remote's status object as report records."""

from __future__ import annotations

from kvwall.budget.remote_report import merge_remotes, remote_entries
from kvwall.budget.report import StatusReport
from kvwall.monitors.remote import RemoteStatus
from kvwall.monitors.snapshot import DeviceMemory
from test_exporter import status_obj

LOCAL = DeviceMemory("host", "host", "Host RAM", True, 100, 50, 50)


def local_report() -> StatusReport:
    return StatusReport(1.0, 2.0, (LOCAL,), (), ())


def test_remote_pools_servers_and_forecasts_are_added_by_host():
    up = RemoteStatus("http://gpu-box:9766", "gpu-box", True, status_obj())
    merged = merge_remotes(local_report(), [up])
    assert [d.id for d in merged.devices] == ["host", "gpu-box/host", "gpu-box/nvidia:0"]
    gpu = merged.devices[2]
    assert gpu.name == "gpu-box: NVIDIA H100" and gpu.total_bytes == 80 << 30
    assert gpu.uuid == "GPU-3b84c06a-611d-8e07-2726-44a868f646fe"
    (server,) = merged.servers
    assert server.key == "gpu-box/pid:42" and server.name == "gpu-box: qwen3"
    assert server.health == "ok" and server.pid is None
    assert server.memory[0].device_id == "gpu-box/nvidia:0"
    assert server.memory[0].kv_bytes == 3 << 30
    assert [s.tokens for s in server.slots] == [1000, 0]
    assert server.slots[0].forecast.turns_left == 6
    assert server.notes[0] == "on gpu-box (remote kvwall)"
    assert [f.device_id for f in merged.pool_forecasts] == ["gpu-box/nvidia:0", "gpu-box/host"]


def test_a_remote_that_is_down_is_shown_as_down():
    down = RemoteStatus("http://spark:9766", "spark", False, None, "is down (connection refused)")
    merged = merge_remotes(local_report(), [down])
    (server,) = merged.servers
    assert server.health == "unreachable" and server.name == "spark (remote kvwall)"
    assert "is down (connection refused)" in server.errors[0]
    assert merged.devices == (LOCAL,)


def test_garbage_fields_do_not_raise():
    odd = {"schema_version": 1, "devices": [{"id": "x", "total_bytes": "lots"}, 3],
           "servers": [{"memory": None, "slots": [{"id": "a"}], "max_ctx": {"f16": None}}]}
    merged = merge_remotes(local_report(), [RemoteStatus("http://h:1", "h", True, odd)])
    assert merged.devices[1].total_bytes is None
    assert merged.servers[0].slots[0].id == 0 and merged.servers[0].max_ctx == {}


def test_no_remotes_leaves_the_report_alone():
    report = local_report()
    assert merge_remotes(report, []) is report


def test_remote_entries():
    assert remote_entries([(" a:1 ", "t"), ("a:1", None), ("", "x"), ("b:2", "")]) == (
        ("a:1", "t"), ("b:2", None))


def test_huge_numbers_and_escapes_from_a_remote_are_not_trusted():
    odd = {"schema_version": 1,
           "devices": [{"id": "x", "total_bytes": 1e308, "free_bytes": float("inf")}],
           "servers": [{"name": "evil\x1b]0;pwned\x07", "slots": [{"id": 0, "n_ctx": 1e308}],
                        "errors": ["\x1b[2J" + "E" * 10_000], "max_ctx": {"f16": 1e308}}]}
    merged = merge_remotes(local_report(), [RemoteStatus("http://h:1", "h", True, odd)])
    assert merged.devices[1].total_bytes is None and merged.devices[1].free_bytes is None
    (server,) = merged.servers
    assert "\x1b" not in server.name and "\\x1b" in server.name
    assert server.slots[0].n_ctx == 0 and server.max_ctx == {}
    assert "\x1b" not in server.errors[0] and "more characters)" in server.errors[0]
