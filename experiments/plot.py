"""Training loss and dev/test accuracy versus forward passes for several runs (PNG).

Example::

    python experiments/plot.py runs/sst2_mezo runs/sst2_gv --out runs/sst2.png
    python experiments/plot.py runs/* --labels MeZO,MeZO-GV --smooth 0.9 --out cmp.png

Each run directory holds the ``metrics.jsonl`` written by ``zojax finetune``. The x-axis is the
cumulative number of training forward passes, so runs of methods with different costs per step
(MeZO 2, MeZO-GV ``M + 2``) compare at equal compute. The training loss is smoothed with an
exponential moving average (``--smooth``, 0 = raw); the right panel shows the dev metric at every
evaluation, and the test metric of the best-by-dev parameters as a marker at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from zojax.train.logging import read_metrics


def read_run(run_dir: Path) -> dict[str, Any]:
    """Train, dev and test records of one run, and a label from its config."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is it a zojax run directory?)")
    recs = read_metrics(path)
    label = run_dir.name
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        c = json.loads(cfg_path.read_text())["config"]
        label = f"{c['optim']['method']} ({c['model']['tuning']}, lr {c['optim']['lr']:g})"
    return {
        "label": label,
        "train": [r for r in recs if r.get("event") == "train" and r.get("loss") is not None],
        "eval": [r for r in recs if r.get("event") == "eval"],
        "test": [r for r in recs if r.get("event") == "test"],
    }


def ema(values: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average ``m_t = β m_{t−1} + (1 − β) x_t``."""
    out, m = [], 0.0
    for t, v in enumerate(values, 1):
        m = beta * m + (1 - beta) * v
        out.append(m / (1 - beta**t) if beta > 0 else v)
    return out


def _metric_key(records: list[dict[str, Any]], prefix: str) -> str | None:
    for r in records:
        for k in r:
            if k.startswith(prefix) and not k.endswith("_loss"):
                return k
    return None


def plot(runs: list[dict[str, Any]], out: Path, smooth: float, title: str | None) -> None:
    """Draws the two panels and saves ``out``."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, run in enumerate(runs):
        color = f"C{i}"
        tr = run["train"]
        if tr:
            x = [r["forwards"] for r in tr]
            ax_loss.plot(x, ema([r["loss"] for r in tr], smooth), color=color, label=run["label"])
        key = _metric_key(run["eval"], "dev_")
        if key:
            ev = [r for r in run["eval"] if r.get(key) is not None]
            ax_acc.plot([r["forwards"] for r in ev], [100 * r[key] for r in ev], "o-",
                        color=color, label=f"{run['label']} dev")  # fmt: skip
        tkey = _metric_key(run["test"], "test_")
        if tkey:
            for r in run["test"]:
                ax_acc.plot([r["forwards"]], [100 * r[tkey]], "*", ms=12, color=color,
                            label=f"{run['label']} test")  # fmt: skip
    ax_loss.set(xlabel="forward passes", ylabel=f"train loss (EMA {smooth:g})",
                title="training loss")  # fmt: skip
    metric = (_metric_key(runs[0]["eval"], "dev_") or "dev_metric")[4:]
    ax_acc.set(xlabel="forward passes", ylabel=f"{metric} (%)", title=f"dev / test {metric}")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line: run directories, ``--out``, ``--labels``, ``--smooth``, ``--title``."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (zojax finetune --out)")
    ap.add_argument("--out", type=Path, default=Path("plot.png"), help="PNG to write")
    ap.add_argument("--labels", default=None, help="comma-separated labels, one per run")
    ap.add_argument("--smooth", type=float, default=0.8, help="EMA factor of the loss (0-1)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    if not 0 <= args.smooth < 1:
        ap.error(f"--smooth: expected 0 <= beta < 1, got {args.smooth}")
    try:
        runs = [read_run(r) for r in args.runs]
    except FileNotFoundError as e:
        ap.error(str(e))
    if args.labels:
        labels = args.labels.split(",")
        if len(labels) != len(runs):
            ap.error(f"--labels: {len(labels)} labels for {len(runs)} runs")
        for run, label in zip(runs, labels, strict=True):
            run["label"] = label
    plot(runs, args.out, args.smooth, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
