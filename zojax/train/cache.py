"""JAX's persistent compilation cache, so that resumed and repeated runs skip compiling.

A zeroth-order step compiles slowly on CPU (every perturbed leaf carries its own fused draw and
``threefry`` key derivations, in each of the perturbed forwards and the update). With the cache on, a
resumed run or a rerun with the same shapes and hyper-parameters loads the executable instead.
"""

from __future__ import annotations

import os

import jax

DEFAULT_DIR = "~/.cache/zojax/xla"
MIN_SECONDS_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"  # programs compiled faster are not stored


def _reset() -> None:
    try:  # the cache decides once per process whether it is used; make it decide again
        from jax._src import compilation_cache

        compilation_cache.reset_cache()
    except (ImportError, AttributeError):  # pragma: no cover (private API moved)
        pass


def enable_compile_cache(path: str | os.PathLike[str] | None = None) -> str | None:
    """Turns on the persistent compilation cache in ``path``.

    Programs that took at least a second to compile are stored (``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``
    sets another threshold).

    Args:
      path: a folder; ``"none"`` leaves the cache off; ``None``: ``$ZOJAX_COMPILE_CACHE`` or
        ``~/.cache/zojax/xla``.

    Returns:
      the folder used, or ``None`` when the cache stays off (disabled or not creatable).
    """
    path = str(path or os.environ.get("ZOJAX_COMPILE_CACHE") or DEFAULT_DIR)
    if path.lower() == "none":
        return None
    path = os.path.expanduser(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    if MIN_SECONDS_ENV not in os.environ:  # JAX's own setting, where given, wins
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _reset()
    return path


def disable_compile_cache() -> None:
    """Turns the persistent compilation cache off again."""
    jax.config.update("jax_compilation_cache_dir", None)
    _reset()
