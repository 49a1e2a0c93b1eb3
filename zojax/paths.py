"""Where zojax looks for data and keeps caches (standard library only: the CLI's listings use it
before anything heavy is imported)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "ZOJAX_DATA_DIR"
"""Environment variable naming the data folder."""
CACHE_ENV_VAR = "ZOJAX_CACHE_DIR"
"""Environment variable naming zojax's cache folder (default ``$XDG_CACHE_HOME/zojax`` or ``~/.cache/zojax``)."""
REPO_ROOT = Path(__file__).resolve().parents[1]


def candidate_data_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for data, in priority order (explicit, env, cwd, repo root)."""
    if data_dir is not None:
        return [Path(data_dir)]
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR])]
    out: list[Path] = []
    for p in (Path.cwd() / ".." / "shared" / "data", REPO_ROOT / ".." / "shared" / "data"):
        p = p.resolve()
        if p not in out:
            out.append(p)
    return out


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first existing folder among :func:`candidate_data_dirs`, or None."""
    for p in candidate_data_dirs(data_dir):
        if p.is_dir():
            return p
    return None


def cache_dir() -> Path:
    """zojax's cache folder (``$ZOJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/zojax``, else ``~/.cache/zojax``)."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zojax"
