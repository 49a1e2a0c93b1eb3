r"""Result tables by MeZO's protocol from finished run directories.

For each task and method (the sweep's label, or the method and its options):

1. the learning rate is chosen by dev: the highest mean over seeds of the dev metric of each
   run's selected checkpoint (ties: the lower mean dev loss);
2. at that learning rate the test metric is reported as mean ± sample standard deviation over
   seeds, with the forward passes per run and the mean wall time;
3. each method is compared with MeZO on the same (task, seed) pairs: the mean paired difference
   :math:`\bar d = \frac1n\sum_i (t_i^{\text{method}} - t_i^{\text{MeZO}})`, its standard error
   :math:`s_d/\sqrt n`, wins/losses/ties and the two-sided exact sign-test p-value
   :math:`p = \min(1, 2\sum_{k \le \min(w, l)} \binom{w+l}{k} 2^{-(w+l)})`, per task and over all
   tasks;
4. the paper's own claim, descent per forward pass, read from the training losses: each
   zeroth-order run's mean logged training loss over the last quarter of its forward passes
   (:func:`train_tail`), compared with MeZO's on the same (task, seed) as the relative reduction
   :math:`100\,(1 - \bar L^{\text{method}}/\bar L^{\text{MeZO}})` (positive: lower training loss).

Runs without training (``zero-shot``) have no learning rate and one row.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from zojax import registry

BASELINE = "MeZO"


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished run, as the table needs it.

    Attributes:
      path: the run directory.
      task: the task name.
      label: the row (the sweep's method label, or method and options).
      lr: the learning rate (``None`` without training).
      seed: the seed.
      dev: the dev metric of the selected parameters (``None`` without dev).
      dev_loss: the dev loss of the selected parameters.
      test: the test metric of the selected parameters.
      test_n: the number of test examples (``None`` if not recorded).
      metric: the metric's name.
      forwards: forward passes of the run.
      wall_time: seconds.
      method: the ``optim.method`` it ran (``mezo``, ``ft``, ``zero-shot`` …).
      evals: the ``eval`` records of its ``metrics.jsonl``, in order.
      train_losses: ``(cumulative forward passes, logged loss)`` of each ``train`` record with a loss.
    """

    path: Path
    task: str
    label: str
    lr: float | None
    seed: int
    dev: float | None
    dev_loss: float | None
    test: float | None
    metric: str
    forwards: int
    wall_time: float
    method: str = ""
    test_n: int | None = None
    evals: tuple[Mapping[str, Any], ...] = ()
    train_losses: tuple[tuple[int, float], ...] = ()


def default_label(config: Mapping[str, Any]) -> str:
    """``mezo``, ``mezo-gv M=4``, ``ft`` … (with ``/lora`` or ``/prefix`` for those tunings)."""
    o, m = config["optim"], config["model"]
    label = o["method"]
    options = registry.METHODS[label].options if label in registry.METHODS else ()
    if "num_candidates" in options:
        label += f" M={o['num_candidates']}"
    if "num_queries" in options:
        label += f" q={o['num_queries']}"
    if m.get("tuning", "full") != "full":
        label += f"/{m['tuning']}"
    return label


def find_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run directories (holding ``results.json``) at or under each path, in the order given (a folder's
    runs sorted by name), each once: the table lists tasks and methods in the order first met."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(q.parent for q in p.rglob("results.json"))
        else:
            raise ValueError(f"{p}: no such run directory")
    return list(dict.fromkeys(out))


def _selected_dev(results: Mapping[str, Any], evals: Sequence[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """Dev metric and dev loss of the selected step (from the run's eval records)."""
    step = results.get("selected_step")
    rec = next((r for r in reversed(evals) if r.get("step") == step), None)
    if rec is None:
        d = results.get("dev_after")
        return (None, None) if not d else (d.get("value"), d.get("loss"))
    return dev_metric(rec), rec.get("dev_loss")


def dev_metric(record: Mapping[str, Any]) -> float | None:
    """The task metric of an ``eval`` record of ``metrics.jsonl`` (``dev_accuracy``, ``dev_f1`` …)."""
    return next(
        (v for k, v in record.items() if k.startswith("dev_") and k not in ("dev_loss", "dev_choice_loss")), None
    )


def load_run(path: Path) -> Run | None:
    """The :class:`Run` of a directory whose ``results.json`` says ``done`` (else ``None``); its
    ``metrics.jsonl`` is read once, for the selected step's dev numbers, the dev curve and the
    training losses."""
    from zojax.sweep.spec import cell_label
    from zojax.train.logging import read_metrics
    from zojax.train.report import read_results

    results = read_results(path)
    if results is None:
        return None
    config = json.loads((path / "config.json").read_text())["config"]
    label = cell_label(path) or default_label(config)
    training = config["optim"]["method"] not in ("zero-shot", "icl")
    logged = read_metrics(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
    evals = tuple(r for r in logged if r.get("event") == "eval")
    train_losses = tuple((int(r["forwards"]), float(r["loss"])) for r in logged
                         if r.get("event") == "train" and r.get("loss") is not None)  # fmt: skip
    dev, dev_loss = _selected_dev(results, evals)
    test = results.get("test") or {}
    return Run(
        path=path,
        task=results["task"],
        label=label,
        lr=config["optim"]["lr"] if training else None,
        seed=int(config["run"]["seed"]),
        dev=dev,
        dev_loss=dev_loss,
        test=test.get("value"),
        metric=test.get("metric") or (results.get("dev_after") or {}).get("metric", "metric"),
        forwards=int(results.get("forwards", 0)),
        wall_time=float(results.get("wall_time", 0.0)),
        method=config["optim"]["method"],
        test_n=test.get("n"),
        evals=evals,
        train_losses=train_losses,
    )


def _mean(xs: Sequence[float | None]) -> float:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else math.nan


def _std(xs: Sequence[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign-test p-value (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def paired(a: Mapping[Any, float], b: Mapping[Any, float], reduction: bool = False) -> dict[str, Any]:
    """The paired comparison of ``a`` against ``b`` on their common keys (seeds or (task, seed)):
    differences ``a − b``, or with ``reduction`` the relative reductions ``1 − a/b`` (for losses:
    positive when ``a`` is lower)."""
    keys = sorted(set(a) & set(b), key=str)
    d = [1 - a[k] / b[k] if reduction else a[k] - b[k] for k in keys]
    n = len(d)
    wins, losses = sum(x > 0 for x in d), sum(x < 0 for x in d)
    return {
        "n": n,
        "mean_diff": statistics.fmean(d) if d else math.nan,
        "se": _std(d) / math.sqrt(n) if n > 1 else math.nan,
        "wins": wins,
        "losses": losses,
        "ties": n - wins - losses,
        "sign_test_p": sign_test(wins, losses),
    }


def train_tail(steps: Sequence[tuple[int, float]], fraction: float = 0.25) -> float | None:
    r"""The mean logged training loss over the last ``fraction`` of a run's forward passes.

    .. math:: \bar L = \operatorname{mean}\{\ell_t : f_t > (1 - \text{fraction})\,F\}

    where :math:`f_t` is step :math:`t`'s cumulative forward count, :math:`F` the last one and
    :math:`\ell_t` its logged loss (zeroth order: :math:`(L(\theta+\epsilon v) + L(\theta-\epsilon v))/2`
    on that step's minibatch). A quarter of a 1,002-forward budget averages 125 MeZO steps or 42
    steps of a 6-forward method, each on its own minibatch.

    Args:
      steps: ``(f_t, ℓ_t)`` of each logged step (:attr:`Run.train_losses`).
      fraction: the share of the forward passes, from the end.

    Returns:
      the mean, or ``None`` without finite training losses.

    Example: ``train_tail([(2, 4.0), (4, 3.0), (6, 2.0), (8, 1.0)]) == 1.0`` (only forward 8 is above 6).
    """
    if not steps:
        return None
    last = max(f for f, _ in steps)
    tail = [float(loss) for f, loss in steps if f > (1 - fraction) * last]
    return statistics.fmean(tail) if tail and all(math.isfinite(x) for x in tail) else None


def binned_losses(steps: Sequence[tuple[int, float]], budget: float, bins: int) -> tuple[list[float], list[float]]:
    r"""Training losses binned by forward passes: the axis ``[0, budget]`` in ``bins`` equal bins.

    A step whose cumulative forward count :math:`f` satisfies :math:`(k-1)F/b < f \le kF/b` falls in
    bin :math:`k`; each bin's value is the mean of its steps' losses, at ``x`` = the bin's centre.
    Empty bins are left out. Binning by forward passes, not steps, puts methods of 2 and 6 forwards
    a step on one axis.

    Args:
      steps: ``(f, loss)`` of each logged step (:attr:`Run.train_losses`).
      budget: :math:`F`, the axis' end.
      bins: :math:`b`.

    Returns:
      ``(bin centres, mean losses)``.

    Example: ``binned_losses([(2, 4.0), (4, 3.0), (6, 2.0), (8, 1.0)], 8, 2) == ([2.0, 6.0], [3.5, 1.5])``.
    """
    width = budget / bins
    sums: dict[int, list[float]] = {}
    for f, loss in steps:
        if f > 0:
            sums.setdefault(min(bins - 1, math.ceil(f / width) - 1), []).append(loss)
    ks = sorted(sums)
    return [(k + 0.5) * width for k in ks], [statistics.fmean(sums[k]) for k in ks]


def dev_means(runs: Sequence[Run]) -> tuple[float, float]:
    """``(mean dev metric, mean dev loss)`` over ``runs`` (NaN where none has one)."""
    return _mean([r.dev for r in runs]), _mean([r.dev_loss for r in runs])


def choose_lr(tried: Mapping[Any, tuple[float, float]]) -> Any:
    r"""The learning rate of the highest mean dev metric; ties go to the lower mean dev loss.

    .. math:: \mathrm{lr}^* = \arg\max_{\mathrm{lr}} \overline{\mathrm{dev}}(\mathrm{lr})

    Args:
      tried: ``{lr: (mean dev metric, mean dev loss)}`` (NaN ranks last).

    Returns:
      the chosen key of ``tried``.

    Example: ``choose_lr({1e-5: (0.70, 0.6), 3e-5: (0.70, 0.5)}) == 3e-5``.
    """

    def key(lr: Any) -> tuple[float, float]:
        dev, loss = tried[lr]
        return (-dev if not math.isnan(dev) else math.inf, loss if not math.isnan(loss) else math.inf)

    return min(tried, key=key)


def build_table(runs: Sequence[Run], baseline: str = BASELINE, loss_bins: int = 20) -> dict[str, Any]:
    """Chooses each (task, label)'s learning rate by dev and summarises test over seeds.

    Args:
      runs: the finished runs (:func:`load_run`).
      baseline: the label every other method is compared with.
      loss_bins: the bins of each zeroth-order run's training-loss curve (:func:`binned_losses`, over
        the largest zeroth-order budget of its task).

    Returns:
      ``{"cells": {task: {label: {...}}}, "tasks", "labels", "paired": {label: {task | "all": ...}},
      "paired_train_loss": (the same, of the training-loss tails)}``;
      a cell holds ``lr``, ``lrs`` (every lr tried with its mean dev), ``test_mean``, ``test_std``,
      ``dev_mean``, ``seeds``, ``tests``, ``devs`` and ``train_tails`` (:func:`train_tail`, zeroth-order
      runs) by seed, ``dev_curves`` (``(forwards, dev metric)`` of each eval record) and
      ``loss_curves`` (binned training losses, zeroth-order runs) by seed, ``forwards``,
      ``wall_time``, ``metric``, ``method``, ``runs``.
    """
    groups: dict[tuple[str, str], dict[Any, list[Run]]] = {}
    for r in runs:
        groups.setdefault((r.task, r.label), {}).setdefault(r.lr, []).append(r)
    cells: dict[str, dict[str, Any]] = {}
    chosen: dict[tuple[str, str], list[Run]] = {}
    for (task, label), by_lr in groups.items():
        tried = {lr: dev_means(rs) for lr, rs in by_lr.items()}
        best_lr = choose_lr(tried)
        rs = sorted(by_lr[best_lr], key=lambda r: r.seed)
        tests = [r.test for r in rs if r.test is not None]
        cells.setdefault(task, {})[label] = {
            "lr": best_lr,
            "lrs": [{"lr": lr, "dev_mean": d, "dev_loss_mean": ls, "runs": len(by_lr[lr])}
                    for lr, (d, ls) in sorted(tried.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))],
            "test_mean": _mean(tests),
            "test_std": _std(tests),
            "dev_mean": _mean([r.dev for r in rs]),
            "seeds": [r.seed for r in rs],
            "tests": {r.seed: r.test for r in rs if r.test is not None},
            "devs": {r.seed: r.dev for r in rs if r.dev is not None},
            "train_tails": {r.seed: t for r in rs if r.method in registry.METHODS
                            and (t := train_tail(r.train_losses)) is not None},
            "dev_curves": {r.seed: curve for r in rs if (curve := _dev_curve(r.evals))[0]},
            "forwards": sorted({r.forwards for r in rs}),
            "wall_time": _mean([r.wall_time for r in rs]),
            "metric": rs[0].metric,
            "test_n": max((r.test_n for r in rs if r.test_n is not None), default=None),
            "method": rs[0].method,
            "runs": [str(r.path) for r in rs],
        }  # fmt: skip
        chosen[(task, label)] = rs
    for task, by_label in cells.items():  # loss curves on one forward axis per task
        zo = {label: c for label, c in by_label.items() if c["method"] in registry.METHODS}
        budget = max((f for c in zo.values() for f in c["forwards"]), default=0)
        for label, c in by_label.items():
            rs = chosen[(task, label)] if label in zo and budget else []
            c["loss_curves"] = {r.seed: binned_losses(r.train_losses, budget, loss_bins) for r in rs if r.train_losses}
    tasks = list(dict.fromkeys(r.task for r in runs if r.task in cells))
    if baseline not in {r.label for r in runs} and "mezo" in {r.label for r in runs}:
        baseline = "mezo"
    labels = _ordered_labels(runs, baseline)
    train = _paired_with(cells, tasks, labels, baseline, "train_tails", reduction=True)
    return {"cells": cells, "tasks": tasks, "labels": labels, "baseline": baseline,
            "paired": _paired_with(cells, tasks, labels, baseline, "tests"), "paired_train_loss": train}  # fmt: skip


def _paired_with(cells: Mapping[str, Any], tasks: Sequence[str], labels: Sequence[str], baseline: str, key: str,
                 reduction: bool = False) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each label's :func:`paired` comparison with ``baseline`` of the cells' ``key`` values (by
    seed), per task and over all tasks' (task, seed) pairs."""
    comparisons: dict[str, dict[str, Any]] = {}
    for label in labels:
        if label == baseline:
            continue
        per: dict[str, Any] = {}
        all_a: dict[Any, float] = {}
        all_b: dict[Any, float] = {}
        for task in tasks:
            a, b = cells[task].get(label), cells[task].get(baseline)
            if a is None or b is None or not set(a[key]) & set(b[key]):
                continue
            per[task] = paired(a[key], b[key], reduction)
            all_a.update({(task, s): v for s, v in a[key].items()})
            all_b.update({(task, s): v for s, v in b[key].items()})
        if per:
            per["all"] = paired(all_a, all_b, reduction)
            comparisons[label] = per
    return comparisons


def _ordered_labels(runs: Sequence[Run], baseline: str) -> list[str]:
    seen: list[str] = []
    for r in runs:
        if r.label not in seen:
            seen.append(r.label)
    order = {"zero-shot": 0, baseline: 1}
    return sorted(seen, key=lambda s: (order.get(s, 2), seen.index(s)))


def _pct(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _chosen_lr(c: Mapping[str, Any]) -> str:
    lr = "—" if c["lr"] is None else f"{c['lr']:g}"
    return f"{lr} ({'/'.join(map(str, c['forwards']))} fwd; {c['wall_time'] / 60:.0f} min)"


def _lr_grid(c: Mapping[str, Any]) -> str:
    tried = [] if c["lr"] is None else c["lrs"]
    return ", ".join(f"{x['lr']:g}: {_pct(x['dev_mean'])}{'*' if x['lr'] == c['lr'] else ''}" for x in tried)


def _per_task_rows(tasks: Sequence[str], labels: Sequence[str], cells: Mapping[str, Any], fmt: Any) -> list[str]:
    """A Markdown table with a row per label and a column per task, each cell ``fmt(cell)``."""
    lines = ["| method | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for label in labels:
        row = [fmt(cells[t][label]) if label in cells[t] else "" for t in tasks]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return lines


def _test_sizes(tasks: Sequence[str], cells: Mapping[str, Any]) -> str:
    r"""The test examples per task, with the largest binomial standard error of one run's accuracy,
    :math:`\max_p \sqrt{p(1-p)/n} = 0.5/\sqrt n` (in points), where the metric is an accuracy: a
    difference between two runs well inside it is test-sampling noise."""
    parts = []
    for t in tasks:
        ns = [c["test_n"] for c in cells[t].values() if c.get("test_n")]
        if not ns:
            continue
        n = max(ns)
        accuracy = all(c["metric"] == "accuracy" for c in cells[t].values())
        parts.append(f"{t} {n}" + (f" (±{50 / math.sqrt(n):.1f})" if accuracy else ""))
    if not parts:
        return ""
    return "Test examples per task (± the largest binomial standard error of one run's accuracy, 50/√n points): " + (
        ", ".join(parts)
    )


def markdown(table: Mapping[str, Any]) -> str:
    """The table (test mean ± std over seeds, in %), the chosen learning rates and the paired
    comparison with the baseline, as Markdown."""
    tasks, labels, cells = table["tasks"], table["labels"], table["cells"]
    head = "| method | " + " | ".join(tasks) + " | mean |"
    lines = [head, "|" + "---|" * (len(tasks) + 2)]
    for label in labels:
        row, means = [], []
        for t in tasks:
            c = cells[t].get(label)
            if c is None:
                row.append("")
                continue
            means.append(c["test_mean"])
            n = len(c["tests"])
            row.append(f"{_pct(c['test_mean'])} ± {_pct(c['test_std'])}" if n > 1 else _pct(c["test_mean"]))
        mean = statistics.fmean(means) if len(means) == len(tasks) and means else math.nan
        lines.append(f"| {label} | " + " | ".join(row) + f" | {_pct(mean)} |")
    if sizes := _test_sizes(tasks, cells):
        lines += ["", sizes]
    lines += ["", "Learning rate chosen by mean dev metric over seeds (forward passes per run; mean wall time):", ""]
    lines += _per_task_rows(tasks, labels, cells, _chosen_lr)
    if any(len(c["lrs"]) > 1 for per in cells.values() for c in per.values()):
        lines += ["", "Dev metric (mean over seeds) at each learning rate tried; * the chosen one:", ""]
        lines += _per_task_rows(tasks, labels, cells, _lr_grid)
    if table["paired"]:
        lines += ["", f"Paired test difference against {table['baseline']} (same task and seed; points):", ""]
        lines += _paired_rows(tasks, table["paired"])
        lines += ["", "(mean difference ± standard error; wins-losses-ties; two-sided sign-test p)"]
    if table.get("paired_train_loss"):
        lines += ["", f"Training-loss reduction against {table['baseline']} over the last quarter of the forward "
                  "passes (same task and seed; 100 (1 − L/L_MeZO), %; positive: lower training loss):", ""]  # fmt: skip
        lines += _paired_rows(tasks, table["paired_train_loss"])
    return "\n".join(lines)


def _paired_rows(tasks: Sequence[str], comparisons: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The Markdown rows of :func:`paired` comparisons (in points: ×100), a column per task and ``all``."""
    lines = ["| method | " + " | ".join([*tasks, "all"]) + " |", "|" + "---|" * (len(tasks) + 2)]
    for label, per in comparisons.items():
        row = []
        for t in [*tasks, "all"]:
            p = per.get(t)
            if p is None:
                row.append("")
                continue
            se = "" if math.isnan(p["se"]) else f" ± {100 * p['se']:.1f}"
            record = f"{p['wins']}-{p['losses']}-{p['ties']}, p={p['sign_test_p']:.2g}"
            row.append(f"{100 * p['mean_diff']:+.1f}{se} ({record})")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return lines


def _dev_curve(evals: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[float]]:
    """``(forwards, dev metric)`` of the eval records that have a metric."""
    pts = [(int(r["forwards"]), float(v)) for r in evals if (v := dev_metric(r)) is not None]
    return [f for f, _ in pts], [v for _, v in pts]


def dev_curves(table: Mapping[str, Any]) -> dict[str, dict[str, dict[int, tuple[list[int], list[float]]]]]:
    """``{task: {label: {seed: (forwards, dev metric)}}}`` of the chosen runs (from their eval records)."""
    return {task: {label: dict(c["dev_curves"]) for label, c in by_label.items()}
            for task, by_label in table["cells"].items()}  # fmt: skip


def plot(table: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    r"""Dev metric against forward passes per task: each zeroth-order method's mean over seeds with a
    min–max band, starting from the untrained model (the zero-shot run of the same seed, whose dev
    split is the same); zero-shot and first-order methods (whose steps are not forward passes) as
    horizontal lines at their mean dev metric (first-order: of the selected step). A second row, when
    the runs logged training losses, shows each zeroth-order method's training loss against forward
    passes (:func:`loss_curves`; mean over seeds, min–max band): how fast each descends per forward.

    Args:
      table: :func:`build_table`'s result.
      path: the image file to write (PNG, SVG, PDF … by its suffix).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, losses = zo_curves(table), loss_curves(table)
    tasks, cells = table["tasks"], table["cells"]
    xmax = max((f for per in cells.values() for c in per.values() if c["method"] in registry.METHODS
                for f in c["forwards"]), default=0)  # fmt: skip
    rows = 2 if any(losses.get(t) for t in tasks) else 1
    zo_labels = [lb for lb in table["labels"] if any(cells[t].get(lb, {}).get("method") in registry.METHODS
                                                      for t in tasks)]  # fmt: skip
    colors = {label: f"C{i % 10}" for i, label in enumerate(zo_labels)}  # one colour per method, every panel
    fig, axes = plt.subplots(rows, len(tasks), figsize=(4 * len(tasks), 3.2 * rows), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for label in table["labels"]:
            c = cells[task].get(label)
            if c is None:
                continue
            if c["method"] not in registry.METHODS:  # zero-shot, ICL, first-order: a reference line
                steps = "" if c["lr"] is None else f" ({'/'.join(map(str, c['forwards']))} steps)"
                ax.axhline(100 * c["dev_mean"], ls=":" if c["lr"] is None else "--",
                           color="0.4" if c["lr"] is None else "k", label=f"{label}{steps}")  # fmt: skip
                continue
            band = _on_common_x(list(curves[task][label].values()))
            if band is None:
                continue
            xs, ys = band
            line = ax.plot(xs, 100 * ys.mean(0), marker="o", ms=3, color=colors[label], label=label)[0]
            if len(ys) > 1:
                ax.fill_between(xs, 100 * ys.min(0), 100 * ys.max(0), color=line.get_color(), alpha=0.15)
        ax.set_title(task)
        if xmax:
            ax.set_xlim(-0.03 * xmax, 1.03 * xmax)
        ax.set_xlabel("forward passes")
        ax.set_ylabel(f"dev {next(iter(cells[task].values()))['metric']} (%)")
        ax.grid(alpha=0.3)
    if rows == 2:
        for ax, task in zip(axes[1], tasks, strict=True):
            for label, by_seed in losses.get(task, {}).items():
                band = _on_common_x(list(by_seed.values()))
                if band is None:
                    continue
                common, ys = band
                ax.plot(common, ys.mean(0), color=colors.get(label), label=label)
                if len(ys) > 1:
                    ax.fill_between(common, ys.min(0), ys.max(0), color=colors.get(label), alpha=0.15)
            if xmax:
                ax.set_xlim(-0.03 * xmax, 1.03 * xmax)
            ax.set_xlabel("forward passes")
            ax.set_ylabel("training loss (binned)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _on_common_x(runs: Sequence[tuple[list, list]]) -> tuple[Any, Any] | None:
    """``(xs, ys [seeds, len(xs)])`` of the seeds' curves at the x values they all share (``None`` if none)."""
    import numpy as np

    common = sorted(set.intersection(*(set(x) for x, _ in runs))) if runs else []
    if not common:
        return None
    return np.array(common), np.array([[dict(zip(x, y, strict=True))[f] for f in common] for x, y in runs])


def zo_curves(table: Mapping[str, Any]) -> dict[str, dict[str, dict[int, tuple[list[int], list[float]]]]]:
    r""":func:`dev_curves` of the zeroth-order methods, each seed's curve starting at forward pass 0
    from the dev metric of the untrained model (the zero-shot run of the same task and seed: the
    same parameters and dev split) when the run itself did not evaluate before training."""
    out: dict[str, dict[str, dict]] = {}
    for task, by_label in dev_curves(table).items():
        zero = next((c for c in table["cells"][task].values() if c["method"] == "zero-shot"), None)
        start = {} if zero is None else zero["devs"]
        for label, curves in by_label.items():
            if table["cells"][task][label]["method"] not in registry.METHODS:
                continue
            out.setdefault(task, {})[label] = {
                seed: ([0, *xs], [start[seed], *ys]) if seed in start and xs[0] > 0 else (xs, ys)
                for seed, (xs, ys) in curves.items()
            }
    return out


def loss_curves(table: Mapping[str, Any]) -> dict[str, dict[str, dict[int, tuple[list[float], list[float]]]]]:
    r"""Each zeroth-order run's training loss binned by forward passes (:func:`binned_losses`, over the
    largest zeroth-order budget of its task, ``loss_bins`` of :func:`build_table`):
    ``{task: {label: {seed: (bin centres, mean losses)}}}``. First-order runs are left out: their
    steps are not forward passes."""
    out: dict[str, dict[str, dict]] = {}
    for task, by_label in table["cells"].items():
        for label, c in by_label.items():
            if c["method"] in registry.METHODS:
                out.setdefault(task, {})[label] = dict(c["loss_curves"])
    return out


def spec_runs(spec_path: str | os.PathLike[str]) -> tuple[list[Path], int]:
    r"""The finished run directories of a sweep spec's cells, and the spec's cell count.

    Restricts a table to one protocol: a folder shared by two specs (a pilot's learning-rate grid
    and the table at the chosen rates) holds cells of both, and only the spec's own cells count.

    Args:
      spec_path: a ``zojax sweep`` spec file (TOML or JSON).

    Returns:
      ``(dirs, n)``: the finished cells' directories (:func:`zojax.sweep.cell_status` ``done``), and
      the number of cells.
    """
    from zojax.sweep import cell_status, load_spec

    spec = load_spec(spec_path)
    cells = spec.cells(pending_ok=True)
    return [d for c in cells if cell_status(d := spec.out / c.id) == "done"], len(cells)


def table_from_dirs(
    paths: Iterable[str | os.PathLike[str]], baseline: str = BASELINE, loss_bins: int = 20
) -> dict[str, Any]:
    """:func:`build_table` over every finished run under ``paths``."""
    runs = [r for p in find_runs(paths) if (r := load_run(p)) is not None]
    if not runs:
        raise ValueError("no finished runs (results.json with status done) under the given paths")
    return build_table(runs, baseline, loss_bins)


def to_json(table: Mapping[str, Any]) -> str:
    """The table as JSON (seed keys become strings)."""
    return json.dumps(table, indent=2, default=str)
