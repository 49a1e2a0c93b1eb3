"""bfloat16 that trains: MeZO on SmolLM2 in float32, plain bfloat16, bfloat16 + stochastic rounding
and bfloat16 + float32 master weights, from the same seed (the same perturbations and batches).

Example::

    python experiments/precision.py --steps 100 --lr 1e-6 --out results/precision --plot docs/precision.png

Each mode is an ordinary ``zojax finetune`` run (``--dtype``, ``--update-rounding``,
``--master-weights``) in ``OUT/<mode>/``. Reported per mode: the fraction of weights whose stored
value changed per step (the trainer's ``changed`` statistic; float32 storage changes nearly every
weight), the train loss, and how much of float32's parameter displacement the mode reproduces,

.. math::

   \\mathrm{kept} = \\frac{\\langle \\Delta_m, \\Delta_{32}\\rangle}{\\lVert\\Delta_{32}\\rVert^2},\\qquad
   \\mathrm{err} = \\frac{\\lVert \\Delta_m - \\Delta_{32}\\rVert}{\\lVert\\Delta_{32}\\rVert},
   \\qquad \\Delta = \\theta_T - \\theta_0,

measured on float32 copies of the final and initial weights (``kept`` ≈ 1: the update survives the
storage; ≈ 0: it rounded away). Writes ``OUT/precision.json`` and, with ``--plot``, a figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

MODES: dict[str, dict[str, Any]] = {
    "float32": {},
    "bfloat16": {"model": {"dtype": "bfloat16"}},
    "bfloat16+SR": {"model": {"dtype": "bfloat16"}, "optim": {"update_rounding": "stochastic"}},
    "bfloat16+master": {"model": {"dtype": "bfloat16", "master_weights": True}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-6, help="MeZO's default full-tuning rate")
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    ap.add_argument("--out", default="results/precision")
    ap.add_argument("--plot", default=None, metavar="PNG")
    ap.add_argument("--replot", action="store_true", help="only redraw --plot from OUT/precision.json")
    return ap.parse_args(argv)


def _config(args: argparse.Namespace, mode: str, out: Path) -> Any:
    from zojax.train import TrainConfig

    c = TrainConfig()
    c.model.name, c.data.task = args.model, args.task
    c.data.max_length, c.data.num_dev, c.data.num_test = args.max_length, 0, 0
    c.optim.method, c.optim.lr, c.optim.eps = "mezo", args.lr, args.eps
    c.optim.batch_size, c.optim.steps = args.batch_size, args.steps
    c.eval.eval_before, c.eval.eval_every = False, 0
    c.run.seed, c.run.out, c.run.progress, c.run.mesh = args.seed, str(out), False, "none"
    c.run.checkpoint_minutes, c.run.resume = 0, (out / "config.json").exists()
    for section, fields in MODES[mode].items():
        for k, v in fields.items():
            setattr(getattr(c, section), k, v)
    return c


def _flat(tree: Any) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(tree)])


def _final_params(out: Path, config: Any) -> np.ndarray:
    from zojax.train import Checkpoints, build_model, build_optimizer, prepare_tuning
    from zojax.train import checkpoint as ckpt_lib

    c = config.resolve()
    model, base = build_model(c.model.name, c.model.dtype if not c.model.master_weights else "float32")
    params = prepare_tuning(model, base, c).params
    target = {"params": params, "opt_state": build_optimizer(c).init(params)}
    state, _ = Checkpoints(out / "checkpoints").restore_latest(ckpt_lib.abstract(target))
    return _flat(state["params"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        saved = json.loads((Path(args.out) / "precision.json").read_text())
        _plot(saved["curves"], argparse.Namespace(**saved["config"]), Path(args.plot))
        return 0
    from zojax.train import Trainer, build_model, read_metrics

    root = Path(args.out)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    summary: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "plot"},
        "machine": {"platform": platform.platform(), "device": str(jax.devices()[0]), "jax": jax.__version__},
        "modes": {},
    }
    finals: dict[str, np.ndarray] = {}
    initial: dict[str, np.ndarray] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    for mode in modes:
        out = root / mode.replace("+", "_")
        cfg = _config(args, mode, out)
        print(f"[precision] {mode}: {out}", flush=True)
        report = Trainer(cfg).run()
        train = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "train"]
        curves[mode] = {
            "loss": [r["loss"] for r in train],
            "changed": [r["changed"] for r in train if "changed" in r],
        }
        finals[mode] = _final_params(out, cfg)
        storage = "float32" if mode in ("float32", "bfloat16+master") else "bfloat16"
        initial[mode] = _flat(build_model(args.model, storage)[1])
        theta0 = initial[mode]
        summary["modes"][mode] = {
            "status": report["status"],
            "changed_per_step_mean": float(np.mean(curves[mode]["changed"])) if curves[mode]["changed"] else None,
            "changed_after_run": float(np.mean(finals[mode] != theta0)),
            "train_loss_first10": float(np.mean(curves[mode]["loss"][:10])),
            "train_loss_last10": float(np.mean(curves[mode]["loss"][-10:])),
            "step_time_median_s": float(np.median([r["step_time"] for r in train[1:]])) if len(train) > 1 else None,
        }
    if "float32" in finals:
        ref = finals["float32"] - initial["float32"]
        for mode, final in finals.items():
            delta = final - initial[mode]
            summary["modes"][mode]["kept"] = float(delta @ ref / (ref @ ref))
            summary["modes"][mode]["err"] = float(np.linalg.norm(delta - ref) / np.linalg.norm(ref))
    summary["curves"] = curves
    root.mkdir(parents=True, exist_ok=True)
    (root / "precision.json").write_text(json.dumps(summary, indent=1))
    head = ("mode", "changed/step", "changed total", "kept", "err", "loss first10", "last10")
    print("{:<17} {:>12} {:>13} {:>6} {:>6} {:>12} {:>7}".format(*head))
    for mode, s in summary["modes"].items():
        per_step = "—" if s["changed_per_step_mean"] is None else f"{s['changed_per_step_mean']:.2%}"
        print(
            f"{mode:<17} {per_step:>12} {s['changed_after_run']:>13.2%} {s.get('kept', float('nan')):>6.3f} "
            f"{s.get('err', float('nan')):>6.3f} {s['train_loss_first10']:>12.4f} {s['train_loss_last10']:>7.4f}"
        )
    if args.plot:
        _plot(curves, args, Path(args.plot))
    return 0


COLORS = {"float32": "tab:blue", "bfloat16": "tab:orange", "bfloat16+SR": "tab:green", "bfloat16+master": "tab:red"}


def _plot(curves: dict[str, dict[str, list[float]]], args: argparse.Namespace, path: Path) -> None:
    """Left: % of bfloat16 weights changed per step; right: each mode's train loss minus float32's
    on the same batches (10-step means; the batches' own spread cancels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    ref = np.asarray(curves["float32"]["loss"]) if "float32" in curves else None
    for mode, c in curves.items():
        color = COLORS.get(mode)
        if c["changed"]:
            a.plot(range(1, len(c["changed"]) + 1), np.asarray(c["changed"]) * 100, label=mode, color=color)
        if ref is not None:
            diff = np.asarray(c["loss"]) - ref
            k = min(10, len(diff))
            b.plot(range(k, len(diff) + 1), np.convolve(diff, np.ones(k) / k, mode="valid"), label=mode, color=color)
    a.set(xlabel="step", ylabel="% of bfloat16 weights changed", title="weights changed per step", yscale="log")
    b.set(xlabel="step", ylabel="loss − float32's loss (10-step mean)", title="train loss against float32")
    for ax in (a, b):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    title = f"MeZO on {args.model}, {args.task}, lr {args.lr:g}, eps {args.eps:g}, batch {args.batch_size}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
