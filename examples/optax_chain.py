"""zojax estimators as optax transformations: MeZO-GV + SGD, and ZO-Adam, on least squares."""

import jax
import jax.numpy as jnp
import optax

import zojax

x = jax.random.normal(jax.random.key(0), (256, 32))
w_true = jax.random.normal(jax.random.key(1), (32,))
y = x @ w_true
params = {"w": jnp.zeros(32), "b": jnp.zeros(())}


def make_loss(x, y):  # a batch -> the loss of the parameters
    return lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


loss = make_loss(x, y)

# (name, transformation, steps): 3000 forward passes each (MeZO 2/step, GV with M=4 6/step).
for name, tx, steps in [
    ("MeZO", zojax.mezo(learning_rate=5e-3), 1500),
    ("MeZO-GV + SGD", optax.chain(zojax.guided(eps=1e-3, num_candidates=4), optax.sgd(5e-3)), 500),
    ("zojax.mezo_gv", zojax.mezo_gv(learning_rate=5e-3, num_candidates=4), 500),
    ("ZO-Adam", optax.chain(zojax.spsa(eps=1e-3), optax.adam(5e-2)), 1500),
]:
    # jax.jit of: updates, state = tx.update(p, state, p, value_fn=make_loss(x, y))
    #             p = optax.apply_updates(p, updates)
    # with p and state donated and zojax.ZO_COMPILER_OPTIONS.
    step = zojax.jit_step(tx, make_loss)
    p = jax.tree.map(jnp.copy, params)  # the step donates (consumes) its p and state
    state = tx.init(p)
    for _ in range(steps):
        p, state, stats = step(p, state, x, y)
    zs = zojax.zo_state(state)
    print(
        f"{name:14s} loss {loss(params):.2f} -> {loss(p):.2e} after {int(zs.count)} steps, "
        f"{int(zs.num_forwards)} forward passes"
    )
