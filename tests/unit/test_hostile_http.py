"""Hostile servers on loopback: a whole request ends at its deadline however slowly a
server trickles its answer, and poll threads never keep the process alive."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from kvwall.monitors.llama_http import TransportError, http_get
from kvwall.monitors.snapshot import HEALTH_TIMEOUT

_HEADERS = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 40) for i in range(20)) + b"\r\n")


class TricklingServer:
    """Accepts connections and sends ``payload`` one byte every ``gap_s`` (bounded)."""

    def __init__(self, payload: bytes, gap_s: float) -> None:
        self.payload = payload
        self.gap_s = gap_s
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                self._read_request(conn)
                for i in range(len(self.payload)):
                    if self.stop.wait(self.gap_s):
                        return
                    try:
                        conn.sendall(self.payload[i:i + 1])
                    except OSError:
                        break

    @staticmethod
    def _read_request(conn: socket.socket) -> None:
        """Read the GET (closing with it unread would reset the connection)."""
        conn.settimeout(2.0)
        request = b""
        for _ in range(64):
            chunk = conn.recv(4096)
            request += chunk
            if not chunk or b"\r\n\r\n" in request:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def trickle() -> Iterator[type[TricklingServer]]:
    servers: list[TricklingServer] = []

    def make(payload: bytes, gap_s: float) -> TricklingServer:
        servers.append(TricklingServer(payload, gap_s))
        return servers[-1]

    yield make  # type: ignore[misc]
    for s in servers:
        s.close()


def test_headers_sent_one_byte_at_a_time_end_at_the_deadline(trickle):
    # 900 header bytes at 20 ms each: 18 s if every byte restarted the wait.
    server = trickle(_HEADERS, 0.02)
    start = time.monotonic()
    with pytest.raises(TransportError) as err:
        http_get(server.url + "/props", {}, 0.5, 0.4)
    assert err.value.kind == "timeout"
    assert time.monotonic() - start < 2.0


def test_a_trickled_body_ends_at_the_deadline(trickle):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    server = trickle(head + b"x" * 5000, 0.0005)  # headers fast, then ~2.5 s of body
    start = time.monotonic()
    with pytest.raises(TransportError) as err:
        http_get(server.url + "/slots", {}, 0.5, 0.3)
    assert err.value.kind == "timeout"
    assert time.monotonic() - start < 2.0


def test_a_prompt_server_still_answers(trickle):
    server = trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 0.0)
    resp = http_get(server.url + "/props", {}, 0.5, 2.0)
    assert resp.status == 200 and resp.body == b"{}"


def test_concurrent_answers_read_until_close_stay_apart(trickle):
    # HTTP/1.0 without a length: http.client closes its connection before the body is
    # read, and the socket must stay open for the body (never another request's fd).
    servers = [trickle(b"HTTP/1.0 200 OK\r\n\r\n" + b"%d" % i * 200, 0.0) for i in range(8)]
    results: dict[int, bytes | str] = {}

    def get(i: int) -> None:
        try:
            results[i] = http_get(servers[i].url + "/props", {}, 0.5, 5.0).body
        except TransportError as e:
            results[i] = str(e)

    threads = [threading.Thread(target=get, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert results == {i: b"%d" % i * 200 for i in range(8)}


_STUCK_STATUS = """
import json
import select
import signal
import socket
from kvwall.monitors.llama_http import LlamaClient
from kvwall.monitors.poller import ClientPool, Poller
from kvwall.monitors.snapshot import ServerProcess
srv = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
url = "http://127.0.0.1:%d" % srv.getsockname()[1]
pool = ClientPool(lambda p: LlamaClient(p, read_timeout=3600.0))
poller = Poller(discover_fn=lambda **kw: [ServerProcess(url=url)], clients=pool,
                deadline_s=0.3)
print(poller.poll().servers[0].health, flush=True)
poller.close()
"""


def test_a_stuck_poll_thread_does_not_keep_the_process_alive():
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _STUCK_STATUS], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == HEALTH_TIMEOUT
    assert time.monotonic() - start < 15


def _status(*args: str) -> list[str]:
    code = "import sys; from kvwall.app.cli import main; raise SystemExit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "status", *args]


def test_status_exits_while_a_server_trickles_its_headers(trickle):
    server = trickle(_HEADERS, 0.5)  # 7 minutes of headers
    start = time.monotonic()
    done = subprocess.run(_status("--url", server.url, "--json"), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 30
    url_server = [s for s in json.loads(done.stdout)["servers"] if s["url"] == server.url]
    assert url_server and url_server[0]["health"] == HEALTH_TIMEOUT


def test_watch_obeys_ctrl_c_while_a_server_trickles(trickle):
    server = trickle(_HEADERS, 0.5)
    proc = subprocess.Popen(_status("--url", server.url, "--watch", "1", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no first screen within 30 s"
        assert proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        # communicate() drains both pipes: a watch blocked writing to a full pipe is not
        # what this test is about, and its stderr says why if it does not stop.
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
