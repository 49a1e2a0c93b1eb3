"""zojax next to the PyTorch way: MeZO and MeZO-GV steps on the same SmolLM2 weights, one run.

The PyTorch side is what users fork today: a transformers ``LlamaForCausalLM`` fine-tuned with the
in-place seed trick of MeZO's ``trainer.py`` (``torch.manual_seed(s)`` then, for every parameter,
``z = torch.normal(...)``; ``param.data = param.data + scale * eps * z``; perturb +ε, forward, −2ε,
forward, +ε, then regenerate z once more for the update) and, for MeZO-GV, the memory-efficient
variant of the authors' code (``trainer_fwa_mem_eff.py``): M candidates perturbed and restored one
at a time, then the guided direction ``mean(top z) − mean(bottom z)`` regenerated per parameter in
every perturb/update call. The zojax side is ``zojax.mezo`` / ``zojax.mezo_gv`` with the model's
on-the-fly perturbation, jitted, parameters donated.

Each framework runs in its own subprocess, so peak RSS (``VmHWM``) is its own: "peak" is the whole
process, "workload" is the peak above the resident set once the weights are loaded (the peak is
reset then, Linux ``clear_refs``). Both sides use every core of the machine.

Loss: next-token cross-entropy on a fixed random batch of token ids (the same ids on both sides);
the losses at θ are printed as a check that both sides run the same network.

Usage::

    pip install -e ".[torch]"          # CPU torch 2.13.0 + accelerate (transformers' GGUF loader)
    python experiments/bench_torch.py --batch-size 16 --seq-len 64 --json results/bench_torch.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import malloc_trim, reset_peak_rss, vm_hwm_bytes, vm_rss_bytes

MiB = 2**20


def token_batch(vocab: int, batch: int, seq: int, seed: int) -> np.ndarray:
    """The benchmark's input ids (numpy, so both frameworks see the same batch)."""
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq), dtype=np.int32)


def timed(fn: Any, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ----------------------------------------------------------------------------- PyTorch side
def torch_child(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from zojax.models.loading import smollm2_gguf_path

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    if args.model == "smollm2-135m-instruct":
        path = smollm2_gguf_path()
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model)
    model = model.eval()  # (GGUF loads dequantised to float32; .float() refuses a GGUF-sourced model)
    if model.dtype != torch.float32:
        raise SystemExit(f"expected float32 weights, got {model.dtype}")
    load_s = time.time() - t0
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ids = torch.from_numpy(token_batch(model.config.vocab_size, args.batch_size, args.seq_len, args.seed)).long()
    mask = torch.ones_like(ids)
    eps, lr = args.eps, args.lr

    @torch.inference_mode()
    def forward() -> float:
        return float(model(input_ids=ids, attention_mask=mask, labels=ids).loss)

    # MeZO's trainer.py, verbatim in structure (allocating param.data = param.data + ... updates)
    def perturb(seed: int, scale: float) -> None:
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * eps

    def mezo_step(rng: np.random.Generator) -> None:
        seed = int(rng.integers(1_000_000_000))
        perturb(seed, 1)
        l1 = forward()
        perturb(seed, -2)
        l2 = forward()
        perturb(seed, 1)
        g = (l1 - l2) / (2 * eps)
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data - lr * (g * z)

    # trainer_fwa_mem_eff.py generalised to M: candidates one at a time, then the guided direction
    # regenerated per parameter from the candidates' generators in every perturb/update call
    def guided(seeds: list[int], weights: list[float], scale: float) -> None:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        for _, p in params:
            v = torch.zeros_like(p.data)
            for gen, w in zip(gens, weights, strict=True):
                v += w * torch.normal(mean=0, std=1, size=p.data.size(), generator=gen, dtype=p.data.dtype)
            p.data = p.data + scale * v

    def gv_step(rng: np.random.Generator) -> None:
        m = args.num_candidates
        s0 = int(rng.integers(1_000_000_000))
        seeds = [s0 + i for i in range(m)]
        losses = []
        for s in seeds:
            guided([s], [1.0], eps)
            losses.append(forward())
            guided([s], [1.0], -eps)
        order = np.argsort(losses)
        top = max(1, int(m * args.elite_ratio))
        weights = [0.0] * m
        for rank, i in enumerate(order):
            weights[i] = 1.0 / top if rank < top else -1.0 / (m - top)
        guided(seeds, weights, eps)
        l1 = forward()
        guided(seeds, weights, -2 * eps)
        l2 = forward()
        guided(seeds, weights, eps)
        guided(seeds, weights, -lr * (l1 - l2) / (2 * eps))

    out: dict[str, Any] = {"framework": "pytorch", "load_s": load_s, "loss_at_theta": forward()}
    malloc_trim()
    out["rss_loaded"] = vm_rss_bytes()
    reset_peak_rss()
    forward()
    out["forward_s"] = timed(forward, args.repeats)
    rng = np.random.default_rng(args.seed)
    mezo_step(rng)
    out["mezo_step_s"] = timed(lambda: mezo_step(rng), args.repeats)
    gv_step(rng)
    out["gv_step_s"] = timed(lambda: gv_step(rng), args.repeats)
    out["workload_peak"] = vm_hwm_bytes() - out["rss_loaded"]
    out["peak"] = vm_hwm_bytes()
    return out


# ----------------------------------------------------------------------------- zojax side
def zojax_child(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    import zojax
    import zojax.models as zm

    t0 = time.time()
    model, params = zm.load_model(args.model)
    params = jax.block_until_ready(params)
    load_s = time.time() - t0
    ids = jnp.asarray(token_batch(model.config.vocab_size, args.batch_size, args.seq_len, args.seed))
    mask = jnp.ones_like(ids)

    def loss_fn() -> Any:
        return zm.next_token_loss(model, ids, mask)

    fwd = jax.jit(lambda p: loss_fn()(p), **zojax.jit_options(donate=False))

    out: dict[str, Any] = {"framework": "zojax", "load_s": load_s, "loss_at_theta": float(fwd(params))}
    malloc_trim()
    out["rss_loaded"] = vm_rss_bytes()
    reset_peak_rss()
    out["forward_s"] = timed(lambda: jax.block_until_ready(fwd(params)), args.repeats)
    for name, tx in (
        ("mezo", zojax.mezo(args.lr, args.eps)),
        ("gv", zojax.mezo_gv(args.lr, args.eps, num_candidates=args.num_candidates, elite_ratio=args.elite_ratio)),
    ):
        state = tx.init(params)
        step = zojax.jit_step(tx, loss_fn)
        t = time.time()
        params, state, _ = jax.block_until_ready(step(params, state))  # compile + warm-up
        out[f"{name}_compile_s"] = time.time() - t
        box = [params, state]

        def run(box: list = box, step: Any = step) -> None:
            box[0], box[1], _ = jax.block_until_ready(step(box[0], box[1]))

        out[f"{name}_step_s"] = timed(run, args.repeats)
        params = box[0]
    out["workload_peak"] = vm_hwm_bytes() - out["rss_loaded"]
    out["peak"] = vm_hwm_bytes()
    return out


# ----------------------------------------------------------------------------- driver
def run_child(which: str, argv: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *argv, "--child", which]
    print(f"[bench_torch] running {which} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{which} child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict[str, Any]], m: int) -> str:
    rows = [
        f"{'framework':10s} {'forward s':>10s} {'MeZO step s':>12s} {'/ (2 fwd)':>10s} "
        f"{f'GV M={m} step s':>15s} {f'/ ({m + 2} fwd)':>10s} {'peak RSS':>10s} {'workload':>10s}"
    ]
    for r in results:
        f = r["forward_s"]
        rows.append(
            f"{r['framework']:10s} {f:10.3f} {r['mezo_step_s']:12.3f} {r['mezo_step_s'] / (2 * f):10.2f} "
            f"{r['gv_step_s']:15.3f} {r['gv_step_s'] / ((m + 2) * f):10.2f} "
            f"{r['peak'] / MiB:8.0f}Mi {r['workload_peak'] / MiB:8.0f}Mi"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded default or an HF folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--num-candidates", type=int, default=4)
    p.add_argument("--elite-ratio", type=float, default=0.5)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=1e-7)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--child", choices=("torch", "zojax"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        fn = torch_child if args.child == "torch" else zojax_child
        print(json.dumps(fn(args)), flush=True)
        return
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("json", "child")]
    results = [run_child("torch", passthrough), run_child("zojax", passthrough)]
    print(
        f"\n{args.model}, batch {args.batch_size} x {args.seq_len} tokens, float32, {os.cpu_count()} CPU threads, "
        f"median of {args.repeats}; loss at theta: "
        + ", ".join(f"{r['framework']} {r['loss_at_theta']:.5f}" for r in results)
    )
    print(table(results, args.num_candidates))
    t, z = results
    print(
        f"zojax / pytorch: MeZO step {z['mezo_step_s'] / t['mezo_step_s']:.3g}x time, "
        f"GV step {z['gv_step_s'] / t['gv_step_s']:.3g}x time, peak RSS {z['peak'] / t['peak']:.2f}x"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config": vars(args), "results": results}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
