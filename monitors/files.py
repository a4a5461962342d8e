"""Opening files kvwall did not make (models, settings, key files): regular files only,
never blocking, never more than a size budget."""

from __future__ import annotations

import os
import stat

# O_NONBLOCK: opening a FIFO that slipped past the check returns at once instead of
# waiting for a writer; O_NOCTTY: a terminal device never becomes our controlling tty.
OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0))


class UnsafeFile(OSError):
    """A file kvwall will not read: not a regular file, too large, or someone else's."""


def read_user_file(path: str | os.PathLike[str], max_bytes: int, *,
                   own_only: bool = False) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (symbolic links followed).

    The file is checked before it is opened (a FIFO would block the open, ``/dev/zero``
    never ends) and again on the open descriptor (it may have been swapped in between).

    Args:
        path: the file.
        max_bytes: the size budget; a larger file is refused, not cut.
        own_only: refuse a file owned by another user (a key file).

    Raises:
        FileNotFoundError: no such file.
        UnsafeFile: not a regular file, larger than ``max_bytes``, or (``own_only``)
            owned by another user; the message says which, never the content.
        OSError: any other reason it cannot be read.
    """
    _check(os.stat(path), max_bytes, own_only)
    fd = os.open(path, OPEN_FLAGS)
    try:
        _check(os.fstat(fd), max_bytes, own_only)
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:  # the file may grow after the check: read one byte past
            chunk = os.read(fd, min(65536, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise UnsafeFile(f"is larger than {max_bytes} bytes")
    return b"".join(chunks)


def _check(st: os.stat_result, max_bytes: int, own_only: bool) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"is not a regular file (a {file_kind(st.st_mode)})")
    if st.st_size > max_bytes:
        raise UnsafeFile(f"is larger than {max_bytes} bytes")
    getuid = getattr(os, "getuid", None)
    if own_only and getuid is not None and st.st_uid != getuid():
        raise UnsafeFile("is owned by another user")


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in a word (``FIFO``, ``folder``...)."""
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


__all__ = ["OPEN_FLAGS", "UnsafeFile", "file_kind", "read_user_file"]
