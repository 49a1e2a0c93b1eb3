"""How much resident memory a compiled SmolLM2-135M MeZO step keeps, against its machine code.

In one process with the parameters resident: RSS after compiling the step (``malloc_trim`` first,
so freed compile memory does not count), after ``jax.clear_caches()`` (jax's tracing and lowering
caches), after deleting the executable; and the size of the object code XLA emitted for it (an
XLA dump into a temporary folder). The difference between "compiled" and "deleted" is what the
loaded executable itself holds.

Usage::

    python experiments/executable_rss.py [--distribution rademacher] [--batch 8 --seq 64]
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import sys
import tempfile

DUMP = tempfile.mkdtemp(prefix="zojax_xla_dump_")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP} --xla_dump_hlo_pass_re=NONE"
).strip()

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_memory as bm  # noqa: E402

import zojax  # noqa: E402
from zojax import perturb  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--distribution", default="gaussian", choices=perturb.DISTRIBUTIONS)
    args = ap.parse_args()

    model, params, ids, mask = bm.setup(args.preset, args.batch, args.seq)
    params = jax.block_until_ready(params)
    bm.malloc_trim()
    base = bm.vm_rss_bytes()
    tx = zojax.mezo(1e-6, 1e-3, distribution=args.distribution)
    state = tx.init(params)
    step = bm.make_step(model, ids, mask, tx)
    compiled, _ = bm.compiled(step, params, state)  # zojax.jit_step donates the parameters and state

    def delta() -> float:
        gc.collect()
        bm.malloc_trim()
        return (bm.vm_rss_bytes() - base) / 2**20

    after_compile = delta()
    jax.clear_caches()
    after_clear = delta()
    del compiled
    after_delete = delta()
    objects = [f for f in glob.glob(os.path.join(DUMP, "*jit_step*obj-file*")) if os.path.isfile(f)]
    code_mib = sum(os.path.getsize(f) for f in objects) / 2**20
    print(f"{args.preset}, batch {args.batch} x {args.seq}, {args.distribution} MeZO step:")
    print(f"  RSS over the parameters-resident process: after compiling {after_compile:+.0f} MiB,")
    print(f"  after jax.clear_caches() {after_clear:+.0f} MiB, after deleting the executable {after_delete:+.0f} MiB")
    print(f"  held by the loaded executable: {after_clear - after_delete:.0f} MiB")
    print(f"  its object code: {code_mib:.1f} MiB in {len(objects)} object files")


if __name__ == "__main__":
    main()
