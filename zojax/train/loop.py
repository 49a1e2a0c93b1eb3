"""The fine-tuning loop: jitted steps, dev evaluation, best-by-dev selection, checkpoints, test.

:class:`Trainer` runs one configured job (:class:`zojax.train.config.TrainConfig`):

1. builds the model (full, LoRA or prefix tuning), the task's MeZO splits and fixed-shape batches
   that depend only on ``(seed, step)``;
2. compiles one step per method with the parameters and optimizer state donated: zeroth-order
   methods call the estimator with a :class:`~zojax.models.PerturbableModelLoss` whose perturbed
   evaluations perturb the model on the fly (compiled with
   :data:`zojax.models.ZO_COMPILER_OPTIONS`); ``ft`` is Adam on ``jax.grad`` of the same objective;
   the compile (the first call) returns the memory it frees to the OS as it goes
   (:func:`zojax.train.heap.returning_freed_memory`), so its garbage does not set the peak RSS;
3. logs every step (loss, projected gradient, cumulative forward passes, time), evaluates on dev
   before training, every ``eval_every`` steps and at the end, keeps the best-by-dev parameters as
   a checkpoint (not in memory), checkpoints every ``checkpoint_every`` steps, at the end and on
   Ctrl-C/SIGTERM, and resumes bitwise identically;
4. reports the test metric of the best-by-dev parameters (``results.json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zojax import registry
from zojax.models import ZO_COMPILER_OPTIONS, Model
from zojax.train import checkpoint as ckpt_lib
from zojax.train.config import (
    FO_METHOD,
    TrainConfig,
    check_resume_compatible,
    from_dict,
    is_zo,
    to_dict,
)
from zojax.train.data import ByteTokenizer, TrainBatches
from zojax.train.evaluation import BestTracker, DevObjective, jitted_objective_sums
from zojax.train.heap import returning_freed_memory
from zojax.train.logging import MetricsLogger
from zojax.train.loss import task_loss
from zojax.transforms import decay_mask, zo_state

PyTree = Any
Array = jax.Array


class RunStopped(Exception):
    """Raised inside the loop when a stop was requested (signal or ``stop_after``)."""


# ---------------------------------------------------------------------- models
def build_model(name: str, dtype: str = "float32", opt_bos: str = "mezo") -> Model:
    """Loads ``name`` (see ``zojax.models.load_model``) or builds ``random:<preset>``.

    ``random:<preset>`` is a randomly initialised Llama (``random:tiny``) or OPT
    (``random:opt-tiny``) preset with a 259-token byte vocabulary and :class:`ByteTokenizer`,
    for tests and smoke runs.
    """
    from zojax import models as zm

    if name.startswith("random:"):
        preset = name.split(":", 1)[1]
        tok = ByteTokenizer()
        ids = {
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "pad_id": tok.pad_id,
        }
        try:
            opt = preset.startswith("opt-")
            cfg = zm.opt_config(preset[4:], **ids) if opt else zm.llama_config(preset, **ids)
        except ValueError as e:
            raise ValueError(f"--model: {e}") from None
        return zm.init_model(cfg, 0, dtype).replace(tokenizer=tok)
    return zm.load_model(name, dtype=dtype, opt_bos=opt_bos)


def check_model_name(name: str) -> None:
    """Cheap existence check of ``--model`` (no weights are read); raises ``ValueError``."""
    from zojax.models import loading

    if name.startswith("random:"):
        build_model_config_only(name)
        return
    if name.lower().strip() in loading.SMOLLM2_ALIASES:
        try:
            loading.smollm2_gguf_path()
        except FileNotFoundError as e:
            raise ValueError(f"--model: {e}") from None
        return
    p = os.path.expanduser(name)
    if os.path.exists(p):
        return
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return  # a hub id; only checkable online
    raise ValueError(f"--model: {name!r} is neither a known name, a local path nor a hub id")


def build_model_config_only(name: str) -> None:
    """Validates a ``random:<preset>`` name."""
    from zojax import models as zm

    preset = name.split(":", 1)[1]
    try:
        if preset.startswith("opt-"):
            zm.opt_config(preset[4:])
        else:
            zm.llama_config(preset)
    except ValueError as e:
        raise ValueError(f"--model: {e}") from None


@dataclasses.dataclass(frozen=True)
class Tuned:
    """A model prepared for a tuning scheme.

    Attributes:
      template: the :class:`~zojax.models.Model` (full) or :class:`~zojax.models.Adapted` whose
        frozen parameters have been taken out (``None``), so that jitted functions do not close
        over them; :meth:`bind` puts them back from a traced argument.
      params: the initial trainable parameters.
      frozen: the frozen base parameters (``None`` for full tuning).
    """

    template: Any
    params: PyTree
    frozen: PyTree

    def bind(self, frozen: PyTree) -> Any:
        """The model (full) or adapter with ``frozen`` as its base parameters."""
        if frozen is None:
            return self.template
        return dataclasses.replace(self.template, model=self.template.model.replace(params=frozen))


def prepare_tuning(model: Model, config: TrainConfig) -> Tuned:
    """Splits ``model`` into trainable and frozen parameters for ``config.model.tuning``."""
    m = config.model
    if m.tuning == "full":
        return Tuned(model.replace(params=None), model.params, None)
    from zojax.models import lora, prefix

    if m.tuning == "lora":
        trainable, adapted = lora.init(
            model,
            config.run.seed,
            rank=m.lora_rank,
            alpha=m.lora_alpha,
            targets=tuple(m.lora_targets),
        )
    else:
        trainable, adapted = prefix.init(model, config.run.seed, num_virtual_tokens=m.num_virtual_tokens)
    template = dataclasses.replace(adapted, model=model.replace(params=None))
    return Tuned(template, trainable, model.params)


# ---------------------------------------------------------------------- optimizer and step
def build_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The method's optimizer: the registered estimator + SGD, or Adam(W) for ``ft``."""
    o = config.optim
    if is_zo(o.method):
        return registry.get(o.method).optimizer(
            o.lr, weight_decay=o.weight_decay, key=config.run.seed, **config.method_options()
        )
    if o.method == FO_METHOD:
        if o.weight_decay:
            return optax.adamw(o.lr, weight_decay=o.weight_decay, mask=decay_mask)
        return optax.adam(o.lr)
    raise ValueError(f"--method: {o.method} does not train")


StepFn = Callable[[PyTree, PyTree, PyTree, Mapping[str, Any]], tuple[PyTree, PyTree, dict]]


def build_step(tuned: Tuned, objective: str, tx: optax.GradientTransformation, zeroth_order: bool) -> StepFn:
    """One jitted step ``(params, opt_state, frozen, batch) -> (params, opt_state, stats)``.

    Zeroth-order: ``tx.update(params, state, params, value_fn=loss)`` with the perturbable task
    loss, compiled with :data:`~zojax.models.ZO_COMPILER_OPTIONS`. First order:
    ``jax.value_and_grad`` of the same loss, then ``tx``. ``params`` and ``opt_state`` are donated.

    Returns:
      the jitted step; ``stats`` holds ``loss`` (ZO: ``(L(θ+εv) + L(θ−εv)) / 2``) and
      ``projected_grad`` (ZO) or ``grad_norm`` (first order), plus ``nonfinite`` (ZO: skipped steps
      so far).
    """

    def step(
        params: PyTree, opt_state: PyTree, frozen: PyTree, batch: Mapping[str, Any]
    ) -> tuple[PyTree, PyTree, dict[str, Array]]:
        loss = task_loss(tuned.bind(frozen), objective, batch)
        if zeroth_order:
            updates, opt_state = tx.update(params, opt_state, params, value_fn=loss)
            s = zo_state(opt_state)
            stats = {
                "loss": s.loss,
                "projected_grad": s.projected_grad,
                "nonfinite": s.nonfinite_count,
            }
        else:
            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            stats = {"loss": value, "grad_norm": optax.tree.norm(grads)}
        return optax.apply_updates(params, updates), opt_state, stats

    options = ZO_COMPILER_OPTIONS if zeroth_order else None
    return jax.jit(step, donate_argnums=(0, 1), compiler_options=options)


def _adapted_logits(template: Any, p: Mapping[str, PyTree], input_ids: Array, attention_mask: Array) -> Array:
    """``logits_fn`` of an adapter for evaluation: ``p = {"frozen", "trainable"}``."""
    lm = dataclasses.replace(template, model=template.model.replace(params=p["frozen"]))
    return lm.logits(p["trainable"], input_ids, attention_mask)


def copy_tree(tree: PyTree) -> PyTree:
    """A device copy of ``tree`` (so that donating the original does not invalidate it)."""
    return jax.tree.map(jnp.copy, tree)


def size_notes(config: TrainConfig, sizes: Mapping[str, int]) -> list[str]:
    """Notes for splits smaller than requested (a small train pool or validation split)."""
    d = config.data
    notes = []
    for split, asked in (("train", d.num_train), ("dev", d.num_dev), ("test", d.num_test)):
        if asked is not None and sizes[split] < asked:
            notes.append(f"{split} has {sizes[split]} examples, fewer than the {asked} asked for (all the data allows)")
    return notes


# ---------------------------------------------------------------------- the trainer
def default_out(config: TrainConfig) -> str:
    """``runs/<task>_<method>_<tuning>_s<seed>_<timestamp>``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    c = config
    return f"runs/{c.data.task}_{c.optim.method}_{c.model.tuning}_s{c.run.seed}_{stamp}"


class Trainer:
    """Runs one fine-tuning (or evaluation-only) job.

    Attributes:
      config: the resolved configuration.
      run_dir: the output directory.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: Model | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Resolves ``config``; ``model`` may be given to skip loading (tests, notebooks).

        Args:
          config: the run's configuration (resolved here).
          model: an already loaded model (must match ``config.model.name``'s role).
          log: where human-readable lines go (default: ``print`` / ``tqdm.write``).
        """
        self.config = config.resolve()
        if self.config.run.out is None:
            self.config.run.out = default_out(self.config)
        self.run_dir = Path(self.config.run.out)
        self._model = model
        self._log = log
        self._stop_signal: int | None = None
        self._steps_this_process = 0
        self._pbar: Any = None

    # ------------------------------------------------------------------ helpers
    def say(self, msg: str) -> None:
        """Prints a line (through tqdm while a progress bar is shown)."""
        if self._log is not None:
            self._log(msg)
        elif self._pbar is not None:
            from tqdm.auto import tqdm

            tqdm.write(msg)
        else:
            print(msg, flush=True)

    def request_stop(self, signum: int | None = None) -> None:
        """Asks the loop to checkpoint and stop after the current step."""
        self._stop_signal = signum if signum is not None else 0

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            del frame
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum
            sys.stderr.write(
                f"\n[zojax] {signal.Signals(signum).name}: finishing the current step, then "
                "checkpointing (Ctrl-C again to abort at once)\n"
            )

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    # ------------------------------------------------------------------ set-up
    def check_run_dir(self) -> None:
        """Raises ``ValueError`` when ``--out`` / ``--resume`` do not fit the run directory (a new
        run in a directory that holds one, a resume without a run, or changed options)."""
        self._prepare_run_dir()

    def _prepare_run_dir(self) -> TrainConfig | None:
        """Checks ``out`` against ``resume``; returns the saved config when resuming."""
        cfg_path = self.run_dir / "config.json"
        if self.config.run.resume:
            if not cfg_path.is_file():
                raise ValueError(f"--resume: no run to resume in {self.run_dir} (no config.json)")
            saved = from_dict(json.loads(cfg_path.read_text())["config"])
            check_resume_compatible(saved, self.config)
            present = ckpt_lib.Checkpoints(self.run_dir / "checkpoints").steps()
            if present and self.config.training and present[-1] > self.config.optim.steps:
                raise ValueError(
                    f"--steps: the run in {self.run_dir} is at step {present[-1]} already; resume with "
                    f"--steps >= {present[-1]} (or a larger --forward-budget)"
                )
            return saved
        if cfg_path.exists() or (self.run_dir / "checkpoints").exists():
            raise ValueError(
                f"--out: {self.run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        return None

    def _write_config(self, extra: Mapping[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        payload = {"config": to_dict(self.config), **extra}
        tmp = self.run_dir / "config.json.tmp"
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, self.run_dir / "config.json")

    def _setup(self) -> None:
        c = self.config
        from zojax.tasks import get_task

        self.task = get_task(c.data.task)
        self.splits = self.task.splits(
            seed=c.run.seed,
            num_train=c.data.num_train,
            num_dev=c.data.num_dev,
            num_test=c.data.num_test,
            data_dir=c.data.data_dir,
        )
        t0 = time.perf_counter()
        model = self._model if self._model is not None else build_model(c.model.name, c.model.dtype, c.model.opt_bos)
        self._model = None
        self.load_seconds = time.perf_counter() - t0
        self.tokenizer = model.tokenizer
        if self.tokenizer is None:
            raise ValueError("--model: the model has no tokenizer")
        self.model_desc = repr(model)
        self.tuned = prepare_tuning(model, c)
        del model
        self.fps = c.forwards_per_step()
        if c.training:
            self.data = TrainBatches(
                self.task,
                self.splits.train.examples,
                self.tokenizer,
                c.optim.batch_size,
                c.run.seed,
                c.data.max_length,
                c.data.max_new_tokens,
            )
            self.tx = build_optimizer(c)
            self.step_fn = build_step(self.tuned, self.task.objective, self.tx, is_zo(c.optim.method))
        self.dev_objective: DevObjective | None = None
        if self.task.objective == "lm" and len(self.splits.dev) > 0:
            # the dev loss of the training objective (MeZO's selection rule) needs its own forwards
            self.dev_objective = DevObjective(
                self.task,
                self.splits.dev.examples,
                self.tokenizer,
                c.optim.batch_size,
                c.data.max_length,
                c.data.max_new_tokens,
            )
            self._dev_sums = jitted_objective_sums(self.tuned.bind, self.task.objective)
        if c.model.tuning == "full":
            self._eval_logits = self.tuned.template.logits
        else:
            self._eval_logits = functools.partial(_adapted_logits, self.tuned.template)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, params: PyTree, split: str) -> dict[str, Any]:
        """Evaluates ``params`` on ``split`` (``"dev"`` or ``"test"``).

        Returns:
          ``{metric, value, n, loss, eval_time}``: ``loss`` is the training objective on the split
          (candidate cross-entropy for classification; the LM loss on the gold answer for
          ``lm`` tasks, dev only), and ``choice_loss`` the candidate cross-entropy of
          multiple-choice tasks.
        """
        from zojax.tasks import evaluate

        c = self.config
        examples = getattr(self.splits, split).examples
        num_demos = c.eval.num_demos if c.optim.method == "icl" else 0
        tuned = self.tuned
        full = c.model.tuning == "full"
        eval_params = params if full else {"frozen": tuned.frozen, "trainable": params}

        def generate_fn(prompt_ids: list[int]) -> list[int]:
            out = tuned.bind(tuned.frozen).generate(
                params,
                prompt_ids,
                max_new_tokens=c.data.max_new_tokens,
                stop_strings=("\n",),
                stop_rule=c.eval.stop_rule,
                return_text=False,
            )
            return list(out)

        kw: dict[str, Any] = {"max_length": c.data.eval_max_length, "progress": c.run.progress}
        if self.task.generation:
            kw.update(max_new_tokens=c.data.max_new_tokens, stop_rule=c.eval.stop_rule)
        else:
            kw.update(token_budget=c.eval.token_budget, pad_to_multiple_of=8)
        t0 = time.perf_counter()
        res = evaluate(
            self.task,
            examples,
            self.tokenizer,
            logits_fn=self._eval_logits,
            params=eval_params,
            generate_fn=generate_fn,
            num_demos=num_demos,
            demo_pool=self.splits.train_pool,
            **kw,
        )
        out: dict[str, Any] = {"metric": res.metric, "value": float(res.value), "n": res.n}
        if res.scores:
            ce = []
            for s, ex in zip(res.scores, examples, strict=True):
                s = np.asarray(s, np.float64)
                lse = s.max() + np.log(np.sum(np.exp(s - s.max())))
                ce.append(lse - s[ex.label])
            out["loss"] = float(np.mean(ce))
        if self.task.objective == "lm":
            if "loss" in out:
                out["choice_loss"] = out.pop("loss")
            if split == "dev" and self.dev_objective is not None:
                out["loss"] = self.dev_objective(self._dev_sums, params, self.tuned.frozen)
        out["eval_time"] = time.perf_counter() - t0
        return out

    def _dev(self, params: PyTree, step: int) -> None:
        """Dev evaluation at ``step``: log, report, and save the params if best so far."""
        c = self.config
        r = self.evaluate(params, "dev")
        self.last_dev = {"step": step, **r}
        if self.dev_before is None and step == 0:
            self.dev_before = dict(self.last_dev)
        rec = {
            "event": "eval",
            "step": step,
            "forwards": step * self.fps,
            f"dev_{r['metric']}": r["value"],
        }
        if "loss" in r:
            rec["dev_loss"] = r["loss"]
        if "choice_loss" in r:
            rec["dev_choice_loss"] = r["choice_loss"]
        rec["eval_time"] = r["eval_time"]
        rec["wall_time"] = self._wall()
        rec["time"] = time.time()
        self.logger.log(rec)
        key = "loss" if c.eval.select_by == "loss" else "value"
        value = r.get(key, math.nan)
        improved = c.training and self.tracker.offer(step, value, r["metric"], r["value"])
        if improved:
            self.ckpts.save_best(step, params, {"best": self.best})
            self.ckpts.prune_best(step)
        self.say(
            f"[zojax] dev {r['metric']} @ step {step} ({step * self.fps} forwards): "
            f"{100 * r['value']:.1f}% on {r['n']} examples"
            + (f", dev loss {r['loss']:.4f}" if "loss" in r else "")
            + (" (best so far)" if improved else "")
        )

    def _wall(self) -> float:
        return self._wall_offset + (time.perf_counter() - self._t_start)

    @property
    def best(self) -> dict[str, Any] | None:
        """The best dev evaluation so far (see :class:`~zojax.train.evaluation.BestTracker`)."""
        return self.tracker.best

    # ------------------------------------------------------------------ checkpoints
    def _state_meta(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "forwards": step * self.fps,
            "wall_time": self._wall(),
            "best": self.best,
            "dev_before": self.dev_before,
            "last_dev": self.last_dev,
            "log_offsets": self.logger.offsets(),
        }

    def _checkpoint(self, step: int, params: PyTree, opt_state: PyTree) -> None:
        t0 = time.perf_counter()
        path = self.ckpts.save(step, {"params": params, "opt_state": opt_state}, self._state_meta(step))
        self._saved_at = time.perf_counter()
        self.ckpts.prune_best(None if self.best is None else self.best["step"])
        self.say(f"[zojax] checkpoint step {step} -> {path} ({time.perf_counter() - t0:.1f}s)")

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Runs the job; returns the final report (also written to ``results.json``).

        The report's ``status`` is ``"done"``, ``"stopped"`` (``stop_after``) or
        ``"interrupted"`` (SIGINT/SIGTERM; ``signal`` gives which); in the last two cases a
        checkpoint was saved and ``--resume`` continues the run.
        """
        saved = self._prepare_run_dir()
        if saved is not None:
            self.config = dataclasses.replace(
                saved,
                optim=dataclasses.replace(
                    saved.optim,
                    steps=self.config.optim.steps,
                    forward_budget=self.config.optim.forward_budget,
                ),
                run=self.config.run,
                data=dataclasses.replace(saved.data, data_dir=self.config.data.data_dir),
            )
        c = self.config
        self._setup()
        self._write_config(
            {
                "forwards_per_step": self.fps,
                "model": self.model_desc,
                "splits": self.splits.meta,
                "train_seq_len": getattr(getattr(self, "data", None), "seq_len", None),
            }
        )
        self.ckpts = ckpt_lib.Checkpoints(self.run_dir / "checkpoints", c.run.keep_checkpoints)
        self.tracker = BestTracker(c.eval.select_by, c.eval.select_initial)
        self.dev_before: dict[str, Any] | None = None
        self.last_dev: dict[str, Any] | None = None
        self._wall_offset = 0.0
        self._t_start = time.perf_counter()
        params, frozen = self.tuned.params, self.tuned.frozen
        self.tuned = dataclasses.replace(self.tuned, params=None)  # the loop owns (donates) them
        opt_state = self.tx.init(params) if c.training else None
        start = 0
        self._done, self._last_saved = 0, -1
        offsets = None
        if c.run.resume and c.training:
            restored = self.ckpts.restore_latest(ckpt_lib.abstract({"params": params, "opt_state": opt_state}))
            if restored is not None:
                state, meta = restored
                params, opt_state = state["params"], state["opt_state"]
                start = int(meta["step"])
                self.tracker.best, self.dev_before = meta.get("best"), meta.get("dev_before")
                self.last_dev = meta.get("last_dev")
                self._wall_offset = float(meta.get("wall_time", 0.0))
                offsets = meta["log_offsets"]
                self.say(f"[zojax] resumed {self.run_dir} at step {start}")
            else:
                self.say(f"[zojax] no usable checkpoint in {self.run_dir}; starting from scratch")
        self.logger = MetricsLogger(self.run_dir, offsets)
        previous = self._install_signals()
        try:
            return self._run(params, opt_state, frozen, start)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.logger.close()
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None

    def _describe(self) -> None:
        c = self.config
        s = self.splits
        parts = [
            f"[zojax] {c.optim.method} on {s.meta['display']} ({s.describe()}), model "
            f"{self.model_desc}, tuning {c.model.tuning}",
        ]
        if c.training:
            parts.append(
                f"[zojax] {c.optim.steps} steps x {self.fps} forwards/step = "
                f"{c.optim.steps * self.fps} forward passes; batch {c.optim.batch_size}, "
                f"lr {c.optim.lr:g}, eps {c.optim.eps:g}, train seq len {self.data.seq_len}"
                + (f" ({self.data.truncated} sequences truncated)" if self.data.truncated else "")
            )
        for note in [*s.meta.get("notes", []), *size_notes(c, s.meta["sizes"])]:
            parts.append(f"[zojax] note: {note}")
        parts.append(f"[zojax] run dir: {self.run_dir}")
        for p in parts:
            self.say(p)

    def _run(self, params: PyTree, opt_state: PyTree, frozen: PyTree, start: int) -> dict:
        c = self.config
        total = c.optim.steps
        self._describe()
        has_dev = len(self.splits.dev) > 0
        status, signum = "done", None
        if c.training:
            if start == 0 and c.eval.eval_before and has_dev:
                self._dev(params, 0)
            if self._stop_signal is None:
                params, opt_state, status = self._train(params, opt_state, frozen, start, total)
                if self._pbar is not None:
                    self._pbar.close()
                    self._pbar = None
                if status == "done" and has_dev and (self.last_dev or {}).get("step") != total:
                    # resumed with --steps equal to the checkpoint's step: the final dev evaluation
                    self._dev(params, total)
                    self._checkpoint(total, params, opt_state)
            else:
                status = "interrupted"
            if status != "done":
                signum = self._stop_signal or None
                if self._last_saved != self._done:
                    self._checkpoint(self._done, params, opt_state)
                how = "interrupted" if status == "interrupted" else "stopped"
                self.say(
                    f"[zojax] {how} at step {self._done}/{total}; resume with: zojax finetune "
                    f"--out {self.run_dir} --resume"
                )
                return {
                    "status": status,
                    "signal": signum,
                    "step": self._done,
                    "run_dir": str(self.run_dir),
                }
        report = self._finish(params)
        return report

    def _train(
        self, params: PyTree, opt_state: PyTree, frozen: PyTree, start: int, total: int
    ) -> tuple[PyTree, PyTree, str]:
        c = self.config
        fps = self.fps
        has_dev = len(self.splits.dev) > 0
        self._done = start
        self._last_saved = start if c.run.resume and start else -1
        if c.run.progress:
            from tqdm.auto import tqdm

            self._pbar = tqdm(
                total=total,
                initial=start,
                desc=c.optim.method,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )
        t_prev = self._saved_at = time.perf_counter()
        while self._done < total:
            if self._stop_signal is not None:
                return params, opt_state, "interrupted" if self._stop_signal else "stopped"
            step = self._done
            batch = self.data.batch(step)
            # the first call compiles: give the compiler's garbage back as it goes (zojax.train.heap)
            first = self._steps_this_process == 0
            with returning_freed_memory() if first else contextlib.nullcontext():
                params, opt_state, stats = self.step_fn(params, opt_state, frozen, batch)
            stats = {k: v.item() for k, v in jax.device_get(stats).items()}
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            self._done = done = step + 1
            self._steps_this_process += 1
            rec: dict[str, Any] = {
                "event": "train",
                "step": done,
                "forwards": done * fps,
                "loss": stats["loss"],
                "lr": c.optim.lr,
            }
            for k in ("projected_grad", "grad_norm", "nonfinite"):
                if k in stats:
                    rec[k] = stats[k]
            rec.update(
                step_time=dt,
                forwards_per_s=fps / dt if dt > 0 else None,
                wall_time=self._wall(),
                time=time.time(),
            )
            self.logger.log(rec)
            if self._pbar is not None:
                self._pbar.set_postfix(
                    loss=f"{stats['loss']:.4f}",
                    fwd=done * fps,
                    fwd_s=f"{fps / dt:.2f}" if dt > 0 else "-",
                    refresh=False,
                )
                self._pbar.update(1)
            if has_dev and (done == total or (c.eval.eval_every and done % c.eval.eval_every == 0)):
                self._dev(params, done)
                t_prev = time.perf_counter()
            stop_after = c.run.stop_after
            if stop_after is not None and self._steps_this_process >= stop_after and done < total:
                self.request_stop()
            periodic = c.run.checkpoint_every and done % c.run.checkpoint_every == 0
            timed = c.run.checkpoint_minutes and time.perf_counter() - self._saved_at >= 60 * c.run.checkpoint_minutes
            if periodic or timed or done == total:
                self._checkpoint(done, params, opt_state)
                self._last_saved = done
                t_prev = time.perf_counter()
        return params, opt_state, "done"

    def _finish(self, params: PyTree) -> dict[str, Any]:
        """Test evaluation of the best-by-dev parameters and the final report."""
        c = self.config
        total = c.optim.steps
        has_dev = len(self.splits.dev) > 0
        if not c.training and has_dev:
            self._dev(params, 0)
        chosen_step = total
        if c.training and self.best is not None and self.best["step"] != total:
            target = ckpt_lib.abstract(params)
            restored = self.ckpts.restore_best(self.best["step"], target)
            if restored is not None:
                del params
                params, _ = restored
                chosen_step = self.best["step"]
            else:
                warnings.warn("best-by-dev parameters unavailable; testing the final ones", stacklevel=2)
        test = None
        if len(self.splits.test) > 0:
            test = self.evaluate(params, "test")
            rec = {
                "event": "test",
                "step": total,
                "forwards": total * self.fps,
                "selected_step": chosen_step,
                f"test_{test['metric']}": test["value"],
            }
            if "loss" in test:
                rec["test_loss"] = test["loss"]
            rec.update(eval_time=test["eval_time"], wall_time=self._wall(), time=time.time())
            self.logger.log(rec)
        report = {
            "status": "done",
            "run_dir": str(self.run_dir),
            "task": c.data.task,
            "method": c.optim.method,
            "tuning": c.model.tuning,
            "model": self.model_desc,
            "steps": total,
            "forwards_per_step": self.fps,
            "forwards": total * self.fps,
            "dev_before": self.dev_before,
            "dev_after": self.last_dev,
            "best": self.best,
            "selected_step": chosen_step,
            "test": test,
            "splits": self.splits.meta,
            "wall_time": self._wall(),
        }
        tmp = self.run_dir / "results.json.tmp"
        tmp.write_text(json.dumps(report, indent=2, default=str))
        os.replace(tmp, self.run_dir / "results.json")
        self._summary(report)
        return report

    def _summary(self, r: dict[str, Any]) -> None:
        def pct(d: dict[str, Any] | None) -> str:
            return "-" if not d else f"{100 * d['value']:.1f}%"

        metric = (r["test"] or r["dev_after"] or r["dev_before"] or {"metric": "metric"})["metric"]
        lines = [
            f"[zojax] ===== {r['method']} / {r['task']} / {r['tuning']}: {r['steps']} steps, "
            f"{r['forwards']} forward passes, {r['wall_time']:.0f}s ====="
        ]
        if self.config.training:
            lines.append(f"[zojax] dev {metric} before: {pct(r['dev_before'])}   after: {pct(r['dev_after'])}")
            if r["best"] is not None:
                lines.append(f"[zojax] best dev ({r['best']['select_by']}) at step {r['best']['step']}")
        elif r["dev_after"]:
            lines.append(f"[zojax] dev {metric}: {pct(r['dev_after'])}")
        if r["test"] is not None:
            lines.append(
                f"[zojax] test {metric} (params of step {r['selected_step']}): "
                f"{pct(r['test'])} on {r['test']['n']} examples"
            )
        lines.append(f"[zojax] results: {self.run_dir / 'results.json'}")
        for line in lines:
            self.say(line)
