r"""The fine-tuning loop: :class:`Trainer` steps, and hooks do everything periodic.

:class:`Trainer` runs one configured job (:class:`zojax.train.config.TrainConfig`):

1. checks the run directory and, when resuming, takes the saved configuration
   (:mod:`zojax.train.run_dir`);
2. assembles the job (:func:`zojax.train.job.build_job`): the task's MeZO splits, the model and
   its trainable/frozen split, fixed-shape batches that depend only on ``(seed, step)``, the
   method's optimizer and jitted step (:mod:`zojax.train.step`), the evaluator;
3. restores the newest checkpoint when resuming: parameters, optimizer state and the
   :class:`~zojax.train.state.RunState` (its ``meta.json``);
4. steps; after each step the hooks (:mod:`zojax.train.hooks`) log it, move the progress bar,
   evaluate on dev every ``eval_every`` steps and at the end (keeping the best-by-dev parameters
   as a checkpoint, not in memory), and checkpoint every ``checkpoint_every`` steps and at the end;
   before each step, one agreement of all processes (:mod:`zojax.train.stopping`, a single
   all-gather) decides whether to stop and whether ``checkpoint_minutes`` have passed since the
   last save (then the last step's state is saved first); Ctrl-C/SIGTERM and ``stop_after``
   checkpoint and stop, and a resume continues bitwise identically (a signal during an
   evaluation stops it before its next forward pass, and the resume repeats it);
5. reports the test metric of the best-by-dev parameters (``results.json``,
   :mod:`zojax.train.report`).

The first step compiles; it returns the memory it frees to the OS as it goes
(:func:`zojax.train.heap.returning_freed_memory`), so the compiler's garbage does not set the peak RSS.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from zojax.models import Model
from zojax.tasks.evaluate import EvaluationStopped
from zojax.train import checkpoint as ckpt_lib
from zojax.train import hosts
from zojax.train import report as report_lib
from zojax.train import run_dir as run_dir_lib
from zojax.train.config import TrainConfig, to_dict
from zojax.train.evaluation import BestTracker
from zojax.train.heap import returning_freed_memory
from zojax.train.hooks import Hooks, ProgressBar, StepInfo
from zojax.train.job import Job, build_job
from zojax.train.logging import MetricsLogger, NullLogger
from zojax.train.models import build_model, check_model_name
from zojax.train.report import precision_warning
from zojax.train.run_dir import default_out
from zojax.train.state import RunState
from zojax.train.step import Tuned, build_optimizer, build_step, prepare_tuning
from zojax.train.stopping import StopControl

__all__ = [
    "Trainer",
    "Tuned",
    "build_model",
    "build_optimizer",
    "build_step",
    "check_model_name",
    "default_out",
    "prepare_tuning",
]

PyTree = Any


class Trainer:
    """Runs one fine-tuning (or evaluation-only) job.

    Attributes:
      config: the resolved configuration (the saved one, once :meth:`run` resumes).
      run_dir: the output directory.
      job: the assembled job (``None`` until :meth:`run`).
      state: where the run stands (step, best and latest dev evaluations, wall time).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: Model | None = None,
        params: PyTree = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Resolves ``config``; ``model`` and ``params`` may be given to skip loading (tests, notebooks).

        Args:
          config: the run's configuration (resolved here).
          model, params: an already loaded model and its parameters (must match
            ``config.model.name``'s role; both or neither).
          log: where human-readable lines go (default: ``print`` / ``tqdm.write``).
        """
        self.config = config.resolve()
        if self.config.run.out is None:
            self.config.run.out = default_out(self.config)
        self.run_dir = Path(self.config.run.out)
        self.job: Job | None = None
        self.state = RunState()
        self._model = (model, params)
        self._log = log
        self._stops = StopControl()
        self._progress: ProgressBar | None = None
        self._logger: MetricsLogger | None = None
        self._ckpts: ckpt_lib.Checkpoints | None = None
        self._tracker = BestTracker(self.config.eval.select_by, self.config.eval.select_initial)

    # ------------------------------------------------------------------ helpers
    @property
    def splits(self) -> Any:
        """The task's splits (once :meth:`run` has assembled the job)."""
        return None if self.job is None else self.job.splits

    @property
    def best(self) -> dict[str, Any] | None:
        """The best dev evaluation so far (see :class:`~zojax.train.evaluation.BestTracker`)."""
        return self.state.best

    def evaluate(self, params: PyTree, split: str) -> dict[str, Any]:
        """Evaluates ``params`` on ``split`` (see :class:`~zojax.train.evaluation.Evaluator`)."""
        return self.job.evaluate(params, split)

    def say(self, msg: str) -> None:
        """Prints a line (through tqdm while a progress bar is shown); process 0 only."""
        if not hosts.is_main():
            return
        if self._log is not None:
            self._log(msg)
        elif self._progress is not None:
            self._progress.write(msg)
        else:
            print(msg, flush=True)

    def request_stop(self, signum: int | None = None) -> None:
        """Asks the loop to checkpoint and stop after the current step."""
        self._stops.request(signum)

    def check_run_dir(self) -> None:
        """Raises ``ValueError`` when ``--out`` / ``--resume`` do not fit the run directory (a new
        run in a directory that holds one, a resume without a run, or changed options)."""
        run_dir_lib.check(self.config)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Runs the job; returns the final report (also written to ``results.json``).

        The report's ``status`` is ``"done"``, ``"stopped"`` (``stop_after``) or
        ``"interrupted"`` (SIGINT/SIGTERM; ``signal`` gives which); in the last two cases a
        checkpoint was saved and ``--resume`` continues the run.
        """
        saved = run_dir_lib.check(self.config)
        if saved is not None:
            self.config = run_dir_lib.resumed(saved, self.config)
        hosts.barrier("zojax-run-dir-checked")  # before process 0 writes into it
        c = self.config
        self.job, params = build_job(c, *self._model)
        self._model = (None, None)
        job = self.job
        if hosts.is_main():
            run_dir_lib.write_config(
                self.run_dir,
                c,
                {
                    "forwards_per_step": job.forwards_per_step,
                    "model": job.model_desc,
                    "splits": job.splits.meta,
                    "train_seq_len": None if job.data is None else job.data.seq_len,
                    "processes": hosts.count(),
                },
            )
        self._ckpts = ckpt_lib.Checkpoints(self.run_dir / "checkpoints", c.run.keep_checkpoints)
        self.state = RunState()
        opt_state = job.placement.init(job.tx.init, params) if c.training else None
        if c.run.resume and c.training:
            params, opt_state = self._restore(params, opt_state)
        self._tracker = BestTracker(c.eval.select_by, c.eval.select_initial, self.state.best)
        main = hosts.is_main()
        self._logger = MetricsLogger(self.run_dir, self.state.log_offsets, c.run.trackers) if main else NullLogger()
        try:
            with self._stops.signals_handled():
                self._logger.log_config(to_dict(c))
                return self._run(params, opt_state, job.tuned.frozen)
        finally:
            self._logger.close()
            self._close_progress()

    def _restore(self, params: PyTree, opt_state: PyTree) -> tuple[PyTree, PyTree]:
        """The newest checkpoint's parameters and optimizer state (and :attr:`state`), if any."""
        restored = self._ckpts.restore_latest(ckpt_lib.abstract({"params": params, "opt_state": opt_state}))
        if restored is None:
            self.say(f"[zojax] no usable checkpoint in {self.run_dir}; starting from scratch")
            return params, opt_state
        tree, meta = restored
        self.state = RunState.from_meta(meta)
        self._stops.last_saved = self.state.step if self.state.step else -1
        self.say(f"[zojax] resumed {self.run_dir} at step {self.state.step}")
        return tree["params"], tree["opt_state"]

    def _run(self, params: PyTree, opt_state: PyTree, frozen: PyTree) -> dict[str, Any]:
        c, job, total = self.config, self.job, self.config.optim.steps
        placed = job.placement.describe(params) if job.placement.mesh is not None else None
        for line in report_lib.describe(
            c, job.splits, job.model_desc, job.forwards_per_step, job.data, self.run_dir, placed
        ):
            self.say(line)
        has_dev = len(job.splits.dev) > 0
        if not c.training:
            try:
                if has_dev:
                    self._dev(params, 0)
                return self._finish(params)
            except EvaluationStopped:  # nothing to save: a rerun evaluates again
                self.say(f"[zojax] interrupted during evaluation; rerun with: zojax finetune --out {self.run_dir} "
                         "--resume")  # fmt: skip
                return self._stop_report(self._stop_status())
        try:
            if self._dev_due_at_start(has_dev):
                self._dev(params, self.state.step)
        except EvaluationStopped:
            return self._stopped(self._stop_status(), params, opt_state)
        status = "interrupted"
        if self._agree()[0] is None:
            params, opt_state, status = self._train(params, opt_state, frozen, self._hooks(has_dev))
            self._close_progress()
        if status != "done":
            return self._stopped(status, params, opt_state)
        try:
            if has_dev and (self.state.last_dev or {}).get("step") != total:
                # resumed with --steps equal to the checkpoint's step: the final dev evaluation
                self._dev(params, total)
                self._checkpoint(total, params, opt_state)
            return self._finish(params)
        except EvaluationStopped:
            return self._stopped(self._stop_status(), params, opt_state)

    def _dev_due_at_start(self, has_dev: bool) -> bool:
        """Whether a dev evaluation comes before the first step: the untrained parameters'
        (``eval_before``; a run stopped before its first step has it already) or, on a resume,
        the one that a stop interrupted at the checkpoint's step (before the final step; the
        final one is done after training)."""
        c, state = self.config, self.state
        if not has_dev:
            return False
        if state.step == 0:
            return c.eval.eval_before and state.dev_before is None
        every = c.eval.eval_every
        due = bool(every) and state.step % every == 0 and state.step < c.optim.steps
        return due and (state.last_dev or {}).get("step") != state.step

    def _train(self, params: PyTree, opt_state: PyTree, frozen: PyTree, hooks: Hooks) -> tuple[PyTree, PyTree, str]:
        """Steps until ``steps`` or a stop request; the hooks do the rest."""
        job, state, total = self.job, self.state, self.config.optim.steps
        stops = self._stops
        stops.restart_clock()
        t_prev = time.perf_counter()
        while state.step < total:
            stop, checkpoint_due = self._agree()  # the step's one collective
            if stop is not None:
                return params, opt_state, self._stop_status()
            if checkpoint_due:  # checkpoint_minutes since the last save: the last step's state
                self._checkpoint(state.step, params, opt_state)
                t_prev = time.perf_counter()  # (not counted in the next step's time)
            batch = job.placement.batch(job.data.batch(state.step))
            # the first call compiles: give the compiler's garbage back as it goes (zojax.train.heap)
            first = stops.steps_this_process == 0
            with returning_freed_memory() if first else contextlib.nullcontext():
                params, opt_state, stats = job.step_fn(params, opt_state, frozen, batch)
            stats = {k: v.item() for k, v in jax.device_get(stats).items()}
            state.step += 1
            state.forwards = state.step * job.forwards_per_step
            stops.steps_this_process += 1
            try:
                hooks.run(StepInfo(state.step, total, params, opt_state, stats, time.perf_counter() - t_prev))
            except EvaluationStopped:  # a stop during the step's dev evaluation: a resume repeats it
                return params, opt_state, self._stop_status()
            t_prev = time.perf_counter()
        return params, opt_state, "done"

    # ------------------------------------------------------------------ hooks
    def _hooks(self, has_dev: bool) -> Hooks:
        """Logging, progress bar, dev evaluation, ``stop_after`` and checkpoints, in that order."""
        c, hooks = self.config, Hooks()
        hooks.add(self._log_step, every=1)
        if c.run.progress and hosts.is_main():
            self._progress = ProgressBar(c.optim.steps, self.state.step, c.optim.method, self.job.forwards_per_step)
            hooks.add(self._progress, every=1)
        if has_dev:
            hooks.add(lambda i: self._dev(i.params, i.step), every=c.eval.eval_every, at_end=True)
        if c.run.stop_after is not None:
            hooks.add(self._stop_after, every=1)
        hooks.add(lambda i: self._checkpoint(i.step, i.params, i.opt_state), every=c.run.checkpoint_every, at_end=True)
        return hooks

    def _log_step(self, info: StepInfo) -> None:
        fps, dt = self.job.forwards_per_step, info.step_time
        rec: dict[str, Any] = {
            "event": "train",
            "step": info.step,
            "forwards": info.step * fps,
            "loss": info.stats["loss"],
            "lr": self.config.optim.lr,
        }
        for k in ("projected_grad", "grad_norm", "nonfinite", "changed"):
            if k in info.stats:
                rec[k] = info.stats[k]
        nearest = self.config.optim.update_rounding == "nearest"
        if nearest and self._stops.steps_this_process == 1 and info.stats.get("changed", 1.0) < 0.5:
            self.say(precision_warning(self.config, info.stats["changed"]))
        rec.update(
            step_time=dt,
            forwards_per_s=fps / dt if dt > 0 else None,
            wall_time=self.state.wall(),
            time=time.time(),
        )
        self._logger.log(rec)

    def _stop_after(self, info: StepInfo) -> None:
        if self._stops.steps_this_process >= self.config.run.stop_after and info.step < info.total:
            self.request_stop()

    def _dev(self, params: PyTree, step: int) -> None:
        """Dev evaluation at ``step``: log, report, and save the params if best so far."""
        c, state, fps = self.config, self.state, self.job.forwards_per_step
        r = self.job.evaluate(params, "dev", self._stops.should_stop)
        state.last_dev = {"step": step, **r}
        if state.dev_before is None and step == 0:
            state.dev_before = dict(state.last_dev)
        rec = {"event": "eval", "step": step, "forwards": step * fps, f"dev_{r['metric']}": r["value"]}
        if "loss" in r:
            rec["dev_loss"] = r["loss"]
        if "choice_loss" in r:
            rec["dev_choice_loss"] = r["choice_loss"]
        rec.update(eval_time=r["eval_time"], wall_time=state.wall(), time=time.time())
        self._logger.log(rec)
        value = r.get("loss" if c.eval.select_by == "loss" else "value", float("nan"))
        improved = c.training and self._tracker.offer(step, value, r["metric"], r["value"])
        state.best = self._tracker.best
        if improved:
            self._ckpts.save_best(step, params, {"best": state.best})
            self._ckpts.prune_best(step)
        self.say(
            f"[zojax] dev {r['metric']} @ step {step} ({step * fps} forwards): "
            f"{100 * r['value']:.1f}% on {r['n']} examples"
            + (f", dev loss {r['loss']:.4f}" if "loss" in r else "")
            + (" (best so far)" if improved else "")
        )

    def _checkpoint(self, step: int, params: PyTree, opt_state: PyTree) -> None:
        t0 = time.perf_counter()
        meta = self.state.meta(self.job.forwards_per_step, self._logger.offsets())
        path = self._ckpts.save(step, {"params": params, "opt_state": opt_state}, meta)
        self._stops.saved(step)
        self._ckpts.prune_best(None if self.best is None else self.best["step"])
        self.say(f"[zojax] checkpoint step {step} -> {path} ({time.perf_counter() - t0:.1f}s)")

    def _stop_status(self) -> str:
        """``"interrupted"`` (a signal) or ``"stopped"`` (``stop_after``, :meth:`request_stop`)."""
        return "interrupted" if self._stops.signal else "stopped"

    def _agree(self) -> tuple[int | None, bool]:
        """Whether to stop, and whether a time-based checkpoint is due (:meth:`StopControl.agree`)."""
        return self._stops.agree(self.state.step, self.config.run.checkpoint_minutes)

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # ------------------------------------------------------------------ the end
    def _stopped(self, status: str, params: PyTree, opt_state: PyTree) -> dict[str, Any]:
        """Checkpoints a stopped run (unless just saved) and says how to resume it."""
        step = self.state.step
        if self._stops.last_saved != step:
            self._checkpoint(step, params, opt_state)
        how = "interrupted" if status == "interrupted" else "stopped"
        self.say(f"[zojax] {how} at step {step}/{self.config.optim.steps}; resume with: zojax finetune "
                 f"--out {self.run_dir} --resume")  # fmt: skip
        return self._stop_report(status)

    def _stop_report(self, status: str) -> dict[str, Any]:
        """What :meth:`run` returns for a run that stopped before its end (step 0 for zero-shot)."""
        return {"status": status, "signal": self._stops.signal or None, "step": self.state.step,
                "run_dir": str(self.run_dir)}  # fmt: skip

    def _finish(self, params: PyTree) -> dict[str, Any]:
        """Test evaluation of the best-by-dev parameters and the final report."""
        c, job, state = self.config, self.job, self.state
        total, fps = c.optim.steps, job.forwards_per_step
        chosen_step = total
        if c.training and self.best is not None and self.best["step"] != total:
            restored = self._ckpts.restore_best(self.best["step"], ckpt_lib.abstract(params))
            if restored is not None:
                del params
                params, _ = restored
                chosen_step = self.best["step"]
            else:
                warnings.warn("best-by-dev parameters unavailable; testing the final ones", stacklevel=2)
        test = None
        if len(job.splits.test) > 0:
            test = job.evaluate(params, "test", self._stops.should_stop)
            rec = {"event": "test", "step": total, "forwards": total * fps, "selected_step": chosen_step,
                   f"test_{test['metric']}": test["value"]}  # fmt: skip
            if "loss" in test:
                rec["test_loss"] = test["loss"]
            rec.update(eval_time=test["eval_time"], wall_time=state.wall(), time=time.time())
            self._logger.log(rec)
        report = report_lib.final_report(c, job, state, self.run_dir, chosen_step, test)
        if hosts.is_main():
            report_lib.write_results(self.run_dir, report)
        for line in report_lib.summary(report, c.training, self.run_dir):
            self.say(line)
        return report
