"""Measured vs predicted direction alignment ‖V∥‖/‖V⊥‖ of every estimator (the paper's §IV lemmas).

Example::

    python experiments/alignment.py --dim 20000 --ks 1,2,4,8,16 --trials 256 --plot alignment.png

Prints one row per (method, k): the measured mean ± standard error of ``√(d−1)·‖V∥‖/‖V⊥‖`` over
``--trials`` real estimates on a linear loss, the exact finite-``k`` prediction
(:func:`zojax.diagnostics.predicted_ratio`) and the paper's asymptotic lemma. Greedy and GV need
``k >= 2``; n-SPSA with ``k = 1`` is MeZO.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from zojax import diagnostics


def main(argv: list[str] | None = None) -> int:
    """Runs the table; optionally writes JSON and a PNG plot."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dim", type=int, default=20_000)
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--trials", type=int, default=256)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG path")
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    d, s = args.dim, math.sqrt(args.dim - 1)
    rows = []
    print(f"d = {d}, {args.trials} trials; values are sqrt(d-1) * |V_par| / |V_perp|")
    print(f"{'method':12s} {'k':>3s} {'measured':>16s} {'exact':>7s} {'lemma':>7s}")
    for m in diagnostics.ALIGNMENT_METHODS:
        for k in ks:
            if m != "nspsa" and k < 2:
                continue
            r = diagnostics.measured_ratios(m, k, d, num_trials=args.trials, seed=k)
            pred, _ = diagnostics.predicted_ratio(m, k, d)
            lemma = diagnostics.lemma_ratio(m, k, d)
            row = {
                "method": m,
                "k": k,
                "measured": s * r.mean(),
                "stderr": s * r.std(ddof=1) / math.sqrt(len(r)),
                "exact": s * pred,
                "lemma": s * lemma,
            }
            rows.append(row)
            print(
                f"{m:12s} {k:3d} {row['measured']:9.3f} ± {row['stderr']:.3f} {row['exact']:7.3f} {row['lemma']:7.3f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for m in diagnostics.ALIGNMENT_METHODS:
            pts = [r for r in rows if r["method"] == m]
            x = [r["k"] for r in pts]
            ax.errorbar(
                x,
                [r["measured"] for r in pts],
                yerr=[2 * r["stderr"] for r in pts],
                marker="o",
                capsize=3,
                label=f"{m} measured",
            )
            ax.plot(x, [r["exact"] for r in pts], "k:", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (queries / candidates)")
        ax.set_ylabel(r"$\sqrt{d-1}\,\|V_\parallel\| / \|V_\perp\|$")
        ax.set_title(f"Alignment with the true gradient, d = {d} (dotted: exact prediction)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
