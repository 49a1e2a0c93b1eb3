r"""Running a sweep: each cell as an ordinary ``zojax finetune`` run in its own folder.

A cell's command line is the ``zojax finetune`` flags of the options that differ from the defaults
(:func:`finetune_argv`; ``--resume`` when the cell has started); ``--print-commands`` prints them
(:func:`shell_line`) for SLURM arrays, GNU parallel or a pod's hosts. :class:`SweepRunner` runs
them as subprocesses, ``jobs`` at a time, resumably::

    status(cell) = done      ->  skipped
                   started   ->  zojax finetune ... --resume
                   new       ->  zojax finetune ...

Each cell's folder gets ``sweep_cell.json`` (sweep name, method label, axis values; read by
``zojax table``) and ``sweep.log`` (the subprocess's output, appended).

Two ways to stop: SIGINT/SIGTERM stop the running cells with a checkpoint (a later run resumes
them); a *drain* (SIGUSR1, :meth:`SweepRunner.drain`, or ``drain_after`` seconds of the sweep's
wall time) lets the running cells finish and starts no new one, for a machine or a job whose time
ends before the sweep does (no cell left half-run where checkpoints are not kept). The cells start
with SIGUSR1 blocked, so a signal to every process of the job (``kill -USR1 -- -PGID``, a
scheduler's warning signal) drains the sweep without killing them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from zojax.sweep.plan import expected_seconds, finished_wall_times, format_seconds
from zojax.sweep.spec import CELL_FILE, Cell, SweepSpec, cell_status
from zojax.train import config as C


def finetune_argv(config: C.TrainConfig, defaults: C.TrainConfig | None = None) -> list[str]:
    """The ``zojax finetune`` arguments that reproduce ``config`` (options that differ from the
    defaults; ``optim.steps`` is left out when ``optim.forward_budget`` sets it)."""
    base = C.flat_items(defaults or C.TrainConfig())
    always = {"model.name", "data.task", "optim.method", "optim.lr", "run.seed"}
    if C.is_zo(config.optim.method):
        always |= {f"optim.{k}" for k in config.method_options() if k != "key"}
    argv: list[str] = []
    for key, value in C.flat_items(config).items():
        if key in ("run.resume", "run.dry_run") or (key == "optim.steps" and config.optim.forward_budget):
            continue
        if (value == base.get(key) and key not in always) or value is None:
            continue
        flag = C.flag(key)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def shell_line(argv: Sequence[str]) -> str:
    """``zojax finetune …`` as one shell-quoted line."""
    import shlex

    return "zojax finetune " + " ".join(shlex.quote(a) for a in argv)


class SweepRunner:
    """Runs the cells of a spec, ``jobs`` at a time, each as a ``zojax finetune`` subprocess.

    SIGINT/SIGTERM are passed on to the running cells, which checkpoint and stop; the sweep then
    exits, and running it again resumes them. SIGUSR1 (or ``drain_after`` seconds after :meth:`run`
    starts) drains the sweep: the running cells finish, no new cell starts.
    """

    def __init__(self, spec: SweepSpec, jobs: int = 1, python: str | None = None,
                 extra_args: Sequence[str] = (), progress: bool = True,
                 drain_after: float | None = None) -> None:  # fmt: skip
        if jobs < 1:
            raise ValueError(f"--jobs: expected an integer >= 1, got {jobs}")
        if drain_after is not None and not drain_after >= 0:
            raise ValueError(f"--drain-after: expected a duration >= 0, got {drain_after} s")
        self.drain_after = drain_after
        self.spec = spec
        self.jobs = jobs
        self.python = python or sys.executable
        self.extra_args = list(extra_args)
        self.progress = progress
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._draining = False
        self._pbar: Any = None

    @property
    def drained(self) -> bool:
        """Whether :meth:`drain` was called (by SIGUSR1, ``drain_after`` or the caller)."""
        return self._draining

    def drain(self, reason: str = "drain") -> None:
        """Starts no new cell from now on; the running ones go on to their end."""
        with self._lock:
            if self._draining or self._stopping:
                return
            self._draining = True
            running = len(self._procs)
        sys.stderr.write(f"\n[zojax sweep] {reason}: {running} running cell(s) will finish; no new cell starts\n")

    def _say(self, message: str) -> None:
        """One timestamped line on stdout (through tqdm when a progress bar is shown)."""
        line = f"[zojax sweep] {time.strftime('%Y-%m-%dT%H:%M:%S')} {message}"
        if self._pbar is not None:
            self._pbar.write(line)
        else:
            print(line, flush=True)

    def command(self, cell: Cell) -> list[str]:
        """The subprocess argv of ``cell`` (``--resume`` when it has started)."""
        cfg = cell.config(self.spec.out)
        argv = finetune_argv(cfg)
        if cell_status(self.spec.out / cell.id) == "started":
            argv.append("--resume")
        return [self.python, "-m", "zojax.cli", "finetune", *argv, "--no-progress", *self.extra_args]

    def run(self, cells: Sequence[Cell] | None = None) -> dict[str, str]:
        """Runs every cell that is not done; returns ``{cell id: final status}``
        (``done``, ``skipped`` (already done), ``failed (exit N)``, ``interrupted`` or, after a stop
        or a drain, ``not started``)."""
        cells = list(self.spec.cells() if cells is None else cells)
        todo = [c for c in cells if cell_status(self.spec.out / c.id) != "done"]
        result = {c.id: "skipped" for c in cells if c not in todo}
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            if hasattr(signal, "SIGUSR1"):  # POSIX
                previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: self.drain("SIGUSR1"))
        started_at = time.monotonic()
        pbar = None
        if self.progress:
            from tqdm.auto import tqdm

            pbar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=self.spec.name, unit="cell")
        self._pbar = pbar
        try:
            pending = list(todo)
            threads: list[threading.Thread] = []

            def worker() -> None:
                if hasattr(signal, "pthread_sigmask"):  # POSIX: the cells this thread starts inherit the mask
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
                while True:
                    with self._lock:
                        if self._stopping or not pending:
                            return
                    if self.drain_after is not None and time.monotonic() - started_at >= self.drain_after:
                        self.drain(f"--drain-after {format_seconds(self.drain_after)} reached")
                    with self._lock:
                        if self._stopping or self._draining or not pending:
                            return
                        cell = pending.pop(0)
                    status = self._run_cell(cell)
                    with self._lock:
                        result[cell.id] = status
                    if pbar is not None:
                        pbar.set_postfix_str(f"{cell.id}: {status}")
                        pbar.update(1)

            for _ in range(min(self.jobs, len(todo))):
                t = threading.Thread(target=worker, daemon=True)
                t.start()
                threads.append(t)
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if pbar is not None:
                pbar.close()
            self._pbar = None
        for c in todo:
            result.setdefault(c.id, "not started")
        return result

    def _on_signal(self, signum: int, frame: Any) -> None:
        del frame
        self._stopping = True
        name = signal.Signals(signum).name
        sys.stderr.write(f"\n[zojax sweep] {name}: stopping the running cells (they checkpoint)\n")
        with self._lock:
            for p in self._procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)

    def _run_cell(self, cell: Cell) -> str:
        run_dir = self.spec.out / cell.id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CELL_FILE).write_text(
            json.dumps({"sweep": self.spec.name, "label": cell.label, "id": cell.id, "axes": cell.axes}, indent=2)
        )
        argv = self.command(cell)
        task = cell.config(self.spec.out).data.task
        expected = expected_seconds(finished_wall_times(self.spec.out), task, cell.label)
        t0 = time.monotonic()
        with open(run_dir / "sweep.log", "a", encoding="utf-8") as log:
            log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
            log.flush()
            with self._lock:
                if self._stopping or self._draining:
                    log.write("# not started: the sweep was stopped or drained\n")
                    return "interrupted" if self._stopping else "not started"
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
                self._procs[cell.id] = proc
            like = "" if expected is None else f"; finished cells like it took {format_seconds(expected)}"
            self._say(f"{cell.id}: {'resumed' if '--resume' in argv else 'started'}{like}")
            code = proc.wait()
            with self._lock:
                self._procs.pop(cell.id, None)
        if code == 0 and cell_status(run_dir) == "done":
            if self.spec.cleanup_checkpoints:
                import shutil

                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            self._say(f"{cell.id}: done ({format_seconds(time.monotonic() - t0)} in this invocation)")
            return "done"
        if self._stopping or code in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM):
            return "interrupted"  # exit 0 without results: stopped by --stop-after
        return f"failed (exit {code}; see {run_dir / 'sweep.log'})"


__all__ = ["SweepRunner", "finetune_argv", "shell_line"]
