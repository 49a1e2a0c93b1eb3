"""Cost of regenerating SubZero's subspace factors (QR) against the rest of one layer's noise.

For one decoder layer's matrices (default: SmolLM2-135M's shapes, hidden 576, MLP 1536, 3 KV heads of
64) it times, jitted on the default backend:

* ``qr``: ``U, V`` for every matrix of the layer (Gaussian draws + reduced QR), what each perturbed
  forward and the update recompute per layer because only keys are stored;
* ``lowrank``: the whole rank-``r`` noise of the layer, ``(√(mn)/r) U Z Vᵀ`` (QR included);
* ``iid``: the i.i.d. Gaussian noise of the layer (MeZO), for scale;
* ``factor_bytes``: what caching ``U, V`` for all layers would hold instead (float32).

Usage: ``python -m experiments.bench_subspace [--rank 32] [--layers 30] [--repeat 20]``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from zojax import perturb

SMOLLM2_135M = {
    "q_proj": (576, 576),
    "k_proj": (576, 192),
    "v_proj": (576, 192),
    "o_proj": (576, 576),
    "gate_proj": (576, 1536),
    "up_proj": (576, 1536),
    "down_proj": (1536, 576),
}


def _time(fn, *args, repeat: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    shapes = SMOLLM2_135M
    dk = jax.tree_util.DictKey
    paths = {n: (dk("layers"), dk(n), dk("kernel")) for n in shapes}
    sub_key = perturb.subspace_key(perturb.key_data(0), 0, 1000)
    cand = perturb.key_data(1)

    @jax.jit
    def qr(layer):
        sub = perturb.Subspace(sub_key, args.rank)
        return [perturb.subspace_basis(sub, paths[n], *s, layer) for n, s in shapes.items()]

    @jax.jit
    def lowrank(layer):
        d = perturb.Direction.single(cand, 1.0, "gaussian", perturb.Subspace(sub_key, args.rank))
        return [d.leaf(paths[n], s, layer) for n, s in shapes.items()]

    @jax.jit
    def iid(layer):
        d = perturb.Direction.single(cand, 1.0)
        return [d.leaf(paths[n], s, layer) for n, s in shapes.items()]

    layer = jnp.uint32(0)
    t_qr = _time(qr, layer, repeat=args.repeat)
    t_low = _time(lowrank, layer, repeat=args.repeat)
    t_iid = _time(iid, layer, repeat=args.repeat)
    factors = sum((m + n) * min(args.rank, m, n) for m, n in shapes.values()) * 4 * args.layers
    params = sum(m * n for m, n in shapes.values()) * 4 * args.layers
    out = {
        "backend": jax.default_backend(),
        "rank": args.rank,
        "per_layer_ms": {"qr": 1e3 * t_qr, "lowrank": 1e3 * t_low, "iid": 1e3 * t_iid},
        "factor_bytes_all_layers": factors,
        "matrix_param_bytes_all_layers": params,
    }
    print(json.dumps(out, indent=1))
    np.testing.assert_(t_qr > 0)


if __name__ == "__main__":
    main()
