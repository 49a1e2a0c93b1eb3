"""Are the losses of a ZO step bitwise equal on one device and on a data-parallel mesh?

Data parallelism at its most favourable: 8 forced host devices, the batch split over ``data``, the
weights replicated, the per-example losses gathered before the mean. For MeZO and MeZO-GV (M = 4)
and three step keys, compares every loss the estimator evaluates (the draws and the perturbed
parameters are bitwise equal by construction and by ``tests/test_sharding.py``).

Usage::

    python experiments/sharding_losses.py
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import zojax
from zojax import perturb


def main() -> None:
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    full = NamedSharding(mesh, P())
    rng = np.random.default_rng(2)
    params = {
        "embed": jnp.asarray(rng.normal(size=(32, 16)), jnp.float32),
        "w": jnp.asarray(0.3 * rng.normal(size=(16, 16)), jnp.float32),
        "head": jnp.asarray(0.3 * rng.normal(size=(16, 4)), jnp.float32),
    }
    x = jnp.asarray(rng.integers(0, 32, size=(16, 6)), jnp.int32)
    y = jnp.asarray(rng.integers(0, 4, size=(16,)), jnp.int32)

    def loss(p, x, y, gather):
        h = jnp.tanh(p["embed"][x].mean(1) @ p["w"])
        per_example = optax.softmax_cross_entropy_with_integer_labels(h @ p["head"], y)
        return jnp.mean(gather(per_example))

    sharded = (
        jax.device_put(params, full),
        jax.device_put(x, NamedSharding(mesh, P("data", None))),
        jax.device_put(y, NamedSharding(mesh, P("data"))),
    )
    print("| method | key | losses | bitwise equal | max abs difference |")
    print("|---|---|---|---|---|")
    equal = total = 0
    for name, options in (("mezo", {}), ("mezo-gv", {"num_candidates": 4})):
        method = zojax.METHODS[name]

        def losses(gather, method=method, options=options):
            def fn(p, x, y, step_key):
                value_fn = lambda q: loss(q, x, y, gather)
                return method.estimate(value_fn, p, step_key, eps=1e-2, **options).losses

            return jax.jit(fn)

        for seed in range(3):
            key = perturb.key_data(seed)
            one = np.asarray(losses(lambda v: v)(params, x, y, key))
            dp = np.asarray(losses(lambda v: jax.lax.with_sharding_constraint(v, full))(*sharded, key))
            same = bool(np.array_equal(one, dp))
            equal += same
            total += 1
            print(f"| {name} | {seed} | {one.size} | {same} | {np.max(np.abs(one - dp)):.3g} |")
    print(f"\nbitwise equal in {equal} of {total} trials")


if __name__ == "__main__":
    main()
