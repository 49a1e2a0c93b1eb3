"""``zojax.train.heap``: freed memory goes back to the OS while a block (a compile) runs."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from zojax.train import heap


def _trim_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zojax-malloc-trim"]


def test_trims_periodically_while_the_block_runs_and_stops_after() -> None:
    calls: list[float] = []
    with heap.returning_freed_memory(0.01, trim=lambda: calls.append(time.monotonic())):
        time.sleep(0.3)
        during = len(calls)
        assert _trim_threads()
    after = len(calls)
    time.sleep(0.05)
    assert during >= 5  # 30 intervals of sleep; a loaded machine may run the thread late
    assert after == during + 1  # one final trim on exit
    assert len(calls) == after and not _trim_threads()


def test_an_error_in_the_block_propagates_and_stops_the_thread() -> None:
    with pytest.raises(RuntimeError, match="boom"), heap.returning_freed_memory(0.01, trim=lambda: None):
        raise RuntimeError("boom")
    assert not _trim_threads()


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_rejects_a_non_positive_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="interval_s"), heap.returning_freed_memory(interval):
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")
def test_malloc_trim_returns_freed_holes_of_the_heap() -> None:
    """Every other one of 2,000 heap buffers of 96 KiB (below glibc's mmap threshold) is freed:
    the holes stay resident until ``malloc_trim`` gives at least half of their pages back."""
    assert heap.malloc_trim()  # glibc: the function exists
    buffers = [np.ones(96 * 1024, np.uint8) for _ in range(2000)]
    keep = buffers[::2]
    del buffers
    before = heap.proc_status_bytes("VmRSS")
    heap.malloc_trim()
    released = before - heap.proc_status_bytes("VmRSS")
    freed = 1000 * 96 * 1024
    assert released >= freed // 2, (released, freed)
    del keep


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_proc_status_bytes_reads_sizes_and_names_a_missing_field() -> None:
    assert 0 < heap.proc_status_bytes("VmRSS") <= heap.proc_status_bytes("VmHWM")
    with pytest.raises(RuntimeError, match="VmNope not found"):
        heap.proc_status_bytes("VmNope")
