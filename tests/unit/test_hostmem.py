"""Host RAM through psutil: the pool, its failures, and per-process resident memory."""

from __future__ import annotations

import os
from types import SimpleNamespace

import psutil
import pytest
from kvwall.monitors.hostmem import (
    HostMemoryError,
    host_device,
    process_name,
    process_rss,
    read_host_pool,
)

GiB = 1024**3


def test_host_pool_used_is_total_minus_available():
    pool = read_host_pool(lambda: SimpleNamespace(total=64 * GiB, available=40 * GiB, free=2 * GiB))
    dev = host_device(pool)
    assert (dev.id, dev.kind, dev.name, dev.unified) == ("host", "host", "Host RAM", True)
    assert dev.total_bytes == 64 * GiB
    assert dev.free_bytes == 40 * GiB  # available, not the tiny "free" (page cache is reclaimable)
    assert dev.used_bytes == 24 * GiB
    assert dev.llama_device is None


def test_real_psutil_reading_is_consistent():
    pool = read_host_pool()
    assert pool.total_bytes == psutil.virtual_memory().total
    assert 0 <= pool.available_bytes <= pool.total_bytes
    assert pool.used_bytes == pool.total_bytes - pool.available_bytes


def test_psutil_failure_is_a_clear_error():
    def broken():
        raise OSError("/proc/meminfo: permission denied")

    with pytest.raises(HostMemoryError, match="permission denied"):
        read_host_pool(broken)
    with pytest.raises(HostMemoryError, match="make no sense"):
        read_host_pool(lambda: SimpleNamespace(total=0, available=0))


def test_process_rss_and_name_of_a_live_and_a_gone_process():
    me = os.getpid()
    rss = process_rss(me)
    assert rss is not None and rss > 1024 * 1024  # a Python interpreter holds MiBs
    assert process_name(me) == psutil.Process(me).name()
    gone = 2**22 + 12345  # above Linux's default pid_max
    assert process_rss(gone) is None
    assert process_name(gone) == ""
