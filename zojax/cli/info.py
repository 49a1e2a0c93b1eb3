"""``zojax methods`` and ``zojax tasks``: the listings (no JAX is imported for either)."""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from zojax import paths, registry
from zojax.train import config as C

OTHER_METHODS = {
    C.FO_METHOD: (1, "first-order fine-tuning: Adam on jax.grad of the same objective (1 forward + 1 backward/step)"),
    "zero-shot": (0, "no training: evaluate the model as it is"),
    "icl": (0, "no training: in-context learning with --num-demos demonstrations"),
}
"""The ``--method`` choices besides the registered estimators: forward passes per step, description."""


def methods_table() -> str:
    """One line per ``--method`` choice: name, forward passes per step, description."""
    rows = [(name, m.forwards_per_step(), m.description) for name, m in registry.METHODS.items()]
    rows += [(name, *OTHER_METHODS[name]) for name in C.method_names() if name not in registry.METHODS]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {n:<{width}}  {f:>2} fwd/step  {d}" for n, f, d in rows)


def methods_main(argv: Sequence[str] | None = None) -> int:
    """``zojax methods``: the registry with forward passes per step."""
    argparse.ArgumentParser(prog="zojax methods", description=methods_main.__doc__).parse_args(argv)
    print("method (--method), forward passes per step with default options, description")
    print(methods_table())
    return 0


def tasks_parser(prog: str) -> argparse.ArgumentParser:
    """The options of ``zojax tasks`` / ``python -m zojax.tasks``."""
    ap = argparse.ArgumentParser(prog=prog, description="Every task with its data source and split sizes.")
    ap.add_argument(
        "--data-dir",
        default=None,
        help="data folder (default: $ZOJAX_DATA_DIR, ./../shared/data, <repo>/../shared/data)",
    )
    ap.add_argument("--source", default="auto", choices=["auto", "local", "hub"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print full errors and notes")
    ap.add_argument("--no-cache", dest="cache", action="store_false", help="recompute the listing")
    return ap


def tasks_cache_file(args: argparse.Namespace) -> Path | None:
    """Where the listing for ``args`` is cached: a file named by a hash of the options, of every
    data file's path, size and modification time, and of zojax's task and protocol code, so that
    any change to the data or the code recomputes it. ``None`` without a data folder."""
    base = paths.resolve_data_dir(args.data_dir)
    if base is None or args.source == "hub":
        return None
    h = hashlib.sha256(repr((args.source, args.seed, args.verbose, str(base))).encode())
    package = paths.REPO_ROOT / "zojax"
    code = [*sorted((package / "tasks").glob("*.py")), package / "train" / "config.py"]
    for root in (base, *code):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return paths.cache_dir() / f"tasks-{h.hexdigest()[:24]}.txt"


def tasks_main(argv: Sequence[str] | None = None) -> int:
    """``zojax tasks``: every task with its data source and split sizes (``python -m zojax.tasks``).

    The listing is cached (:func:`tasks_cache_file`) when every task's data was found locally, so a
    second call answers without loading the data (``--no-cache`` recomputes).
    """
    args = tasks_parser("zojax tasks").parse_args(argv)
    cache = tasks_cache_file(args) if args.cache else None
    if cache is not None and cache.is_file():
        sys.stdout.write(cache.read_text())
        return 0
    from zojax.tasks.__main__ import list_tasks

    out = io.StringIO()
    status, complete = list_tasks(args, out)
    text = out.getvalue()
    sys.stdout.write(text)
    if cache is not None and complete:
        try:  # a cache is an optimisation: a read-only home must not fail the listing
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, cache)
        except OSError:
            pass
    return status
