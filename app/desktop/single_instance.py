"""One kvwall per user: a second launch asks the first to raise its window, then exits."""

from __future__ import annotations

import getpass
import logging

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

MESSAGE = b"raise\n"


def default_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    return f"kvwall-{user}"


class SingleInstance(QObject):
    """Claims the per-user local socket.

    ``claim()`` returns True for the first instance (which then emits :attr:`activated`
    each time another launch knocks) and False for a later one (after it has asked the
    first to raise itself).
    """

    activated = Signal()

    def __init__(self, name: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name or default_name()
        self.server: QLocalServer | None = None
        self._buffers: dict[QLocalSocket, bytes] = {}

    def claim(self, timeout_ms: int = 1000) -> bool:
        sock = QLocalSocket()
        sock.connectToServer(self.name)
        if sock.waitForConnected(timeout_ms):
            sock.write(MESSAGE)
            sock.flush()
            sock.waitForBytesWritten(timeout_ms)
            sock.disconnectFromServer()
            log.info("another kvwall is running; asked it to show its window")
            return False
        # Nobody answered: a socket file left by a crashed instance is stale.
        QLocalServer.removeServer(self.name)
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not self.server.listen(self.name):
            log.warning("cannot listen on %s: %s", self.name, self.server.errorString())
            return True
        self.server.newConnection.connect(self._connection)
        return True

    def _connection(self) -> None:
        while self.server is not None and self.server.hasPendingConnections():
            conn = self.server.nextPendingConnection()
            self._buffers[conn] = b""
            conn.readyRead.connect(self._ready_read)
            conn.disconnected.connect(self._disconnected)
            self._read(conn)

    def _ready_read(self) -> None:
        conn = self.sender()
        if isinstance(conn, QLocalSocket):
            self._read(conn)

    def _disconnected(self) -> None:
        conn = self.sender()
        if isinstance(conn, QLocalSocket):
            self._read(conn)
            self._buffers.pop(conn, None)
            conn.deleteLater()

    def _read(self, conn: QLocalSocket) -> None:
        if conn not in self._buffers or not conn.isOpen() or not conn.bytesAvailable():
            return
        self._buffers[conn] += bytes(conn.readAll().data())
        if MESSAGE in self._buffers[conn]:
            self._buffers[conn] = b""
            self.activated.emit()

    def release(self) -> None:
        for conn in list(self._buffers):
            conn.abort()
        self._buffers.clear()
        if self.server is not None:
            self.server.close()
            self.server.deleteLater()
            self.server = None
