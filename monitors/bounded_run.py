"""Running a program kvwall did not write, bounded: a deadline, an output cap, and the
whole process group killed when either is passed (what ``llama-server --list-devices``
is asked with). Imported only when a binary must really be run (a cache miss)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Run:
    """One bounded run of the binary."""

    returncode: int | None  # None: killed (timeout or too much output)
    stdout: bytes
    stderr: bytes
    problem: str | None = None  # "did not answer within 20 s", "printed more than ..."


class _Reader(threading.Thread):
    """Reads one pipe to its end, keeping at most ``limit`` bytes; ``over`` is set when
    there was more."""

    def __init__(self, pipe: IO[bytes] | None, limit: int, over: threading.Event) -> None:
        super().__init__(daemon=True)
        self._pipe = pipe
        self._limit = limit
        self._over = over
        self.data = bytearray()

    def run(self) -> None:
        if self._pipe is None:
            return
        # read1: what the pipe holds now, so the limit is checked as output arrives
        read: Callable[[int], bytes] = getattr(self._pipe, "read1", self._pipe.read)
        try:
            while True:
                chunk = read(65536)
                if not chunk:
                    return
                if len(self.data) + len(chunk) > self._limit:
                    self._over.set()
                    return
                self.data += chunk
        except (OSError, ValueError):
            return


class Spawned:
    """A started binary whose output is being read (so several can run at once)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], *,
                 max_output_bytes: int, pipe_grace_s: float) -> None:
        self.argv = list(argv)
        self.max_output_bytes = max_output_bytes
        self.pipe_grace_s = pipe_grace_s
        self.over = threading.Event()
        # The user's own llama-server, never through a shell.
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=dict(env), close_fds=True,
            start_new_session=os.name == "posix")
        self.readers = [_Reader(self.proc.stdout, max_output_bytes, self.over),
                        _Reader(self.proc.stderr, max_output_bytes, self.over)]
        for r in self.readers:
            r.start()

    def finish(self, deadline: float, timeout_s: float) -> Run:
        """Wait for the end (or the deadline, or too much output); never leaves it running."""
        problem = None
        while self.proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                problem = f"did not answer within {timeout_s:g} s"
                break
            if self.over.wait(min(left, 0.05)):
                problem = f"printed more than {self.max_output_bytes // 1024} KiB"
                break
        if problem is None and self.over.is_set():
            problem = f"printed more than {self.max_output_bytes // 1024} KiB"
        if problem is not None:
            self._kill()
        self._join_readers()
        out, err = (bytes(r.data) for r in self.readers)
        return Run(None if problem else self.proc.returncode, out, err, problem)

    def _join_readers(self) -> None:
        """Let the readers reach the end of the pipes; a child the binary left behind
        holding them open is killed with its process group (closing a pipe a reader is
        blocked on would wait for that child)."""
        self._join(self.pipe_grace_s)
        if any(r.is_alive() for r in self.readers):
            self._kill()
            self._join(self.pipe_grace_s)
        if not any(r.is_alive() for r in self.readers):
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()

    def _join(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        for r in self.readers:
            r.join(timeout=max(0.0, end - time.monotonic()))

    def _kill(self) -> None:
        """Kill the binary and anything it started (its own process group)."""
        try:
            if os.name == "posix":
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit after SIGKILL", self.argv[0])
