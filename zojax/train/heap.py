"""Giving freed heap memory back to the operating system while XLA compiles.

Compiling a zeroth-order step allocates and frees some hundred MiB of small objects (HLO
instructions, dataflow analyses, MLIR and LLVM modules of every fused kernel). glibc keeps freed
chunks that are not at the top of an arena, so the process's resident memory only grows during a
compile and its peak is set by the compiler's garbage rather than by what it keeps: measured with
``experiments/bench_memory.py`` at SmolLM2-135M shape, RSS rose by ~240 MiB while compiling a MeZO
step and fell to ~120 MiB above the start after one ``malloc_trim(0)``. :func:`returning_freed_memory`
calls ``malloc_trim`` from a background thread while a block runs, which caps that transient.
Where ``malloc_trim`` does not exist (not glibc) both functions do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Callable, Iterator

DEFAULT_INTERVAL_S = 0.05


@functools.cache
def _libc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def proc_status_bytes(field: str) -> int:
    """A memory size of this process from ``/proc/self/status`` (Linux), in bytes.

    Args:
      field: e.g. ``"VmRSS"`` (resident now) or ``"VmHWM"`` (peak resident).

    Returns:
      the size in bytes; raises ``RuntimeError`` when the field is missing.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def malloc_trim() -> bool:
    """Returns the free pages of every malloc arena to the OS (glibc ``malloc_trim(0)``).

    Returns:
      whether the C library has ``malloc_trim`` (glibc); ``False`` means nothing was done.
    """
    trim = _libc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@contextlib.contextmanager
def returning_freed_memory(
    interval_s: float = DEFAULT_INTERVAL_S, trim: Callable[[], object] = malloc_trim
) -> Iterator[None]:
    """Calls ``trim`` every ``interval_s`` seconds, from a daemon thread, while the block runs.

    Use it around ``jax.jit(f).lower(...).compile()`` or the first call of a jitted function: the
    peak resident memory of the compile is then what the compiler holds at once instead of
    everything it ever allocated. A compile spends most of its time in C++ without the GIL, so the
    thread runs alongside it; each trim takes a few milliseconds.

    Args:
      interval_s: seconds between two trims (> 0).
      trim: the function called; :func:`malloc_trim` by default.

    Example::

      with returning_freed_memory():
          compiled = jax.jit(step).lower(params, state).compile()
    """
    if not interval_s > 0:
        raise ValueError(f"interval_s: expected a positive number of seconds, got {interval_s!r}")
    if trim is malloc_trim and _libc_trim() is None:
        yield
        return
    done = threading.Event()

    def loop() -> None:
        while not done.wait(interval_s):
            trim()

    thread = threading.Thread(target=loop, name="zojax-malloc-trim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        trim()
