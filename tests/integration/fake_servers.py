"""Misbehaving HTTP servers on loopback for tests: one hangs, one talks garbage, one dies.

Each is a real ``http.server`` on ``127.0.0.1:<free port>`` served from a thread, used as a
context manager. They are bounded: a hung request is released after ``limit_s`` at the
latest, and the server stops itself after ``limit_s`` even if a test forgets to.
"""

from __future__ import annotations

import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_LIMIT_S = 20.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeServer:
    """Base: starts on enter, stops on exit (or by itself after ``limit_s``)."""

    def __init__(self, limit_s: float = DEFAULT_LIMIT_S) -> None:
        self.limit_s = limit_s
        self.requests: list[str] = []
        self.release = threading.Event()  # frees hung handlers
        self._stopped = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, name=f"fake-{type(self).__name__}",
                                        daemon=True)
        self._timer = threading.Timer(limit_s, self.stop)
        self._timer.daemon = True

    def _serve(self) -> None:
        self._httpd.serve_forever(poll_interval=0.05)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # http.server's name
                owner.requests.append(self.path)
                owner.handle(self)

        return Handler

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes,
             ctype: str = "application/json; charset=utf-8") -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body)
        h.close_connection = True

    def start(self) -> FakeServer:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.release.set()
        self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._thread.join(self.limit_s)


class HangingServer(FakeServer):
    """Accepts the connection, reads the request, never answers (until released)."""

    def __init__(self, limit_s: float = DEFAULT_LIMIT_S) -> None:
        super().__init__(limit_s)
        self.hung = threading.Event()  # set once a request is being held

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        self.hung.set()
        self.release.wait(self.limit_s)
        h.close_connection = True


class GarbageServer(FakeServer):
    """Answers every request 200 with a body that is not what the endpoint returns."""

    BODY = b"<html><body>502 Bad Gateway (not JSON {{{</body></html>"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        self.send(h, 200, self.BODY)


class DyingServer(FakeServer):
    """A llama-server that answers its first request (``/props``, as recorded from the real
    server) and dies on the next one.

    The next request's connection is reset without an answer and the listening socket is
    closed, so any later connection is refused: the process was killed mid-poll.
    """

    def __init__(self, props: bytes, limit_s: float = DEFAULT_LIMIT_S) -> None:
        super().__init__(limit_s)
        self.props = props
        self.answered = threading.Event()
        self.died = threading.Event()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        if not self.answered.is_set():
            self.answered.set()
            self.send(h, 200, self.props)
            return
        self.died.set()
        # Reset the connection (RST, no answer), then stop listening.
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True
        threading.Thread(target=self.stop, daemon=True).start()
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        h.connection.close()


__all__ = ["DyingServer", "FakeServer", "GarbageServer", "HangingServer"]
