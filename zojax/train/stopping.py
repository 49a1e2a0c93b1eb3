r"""When the training loop stops, and when a time-based checkpoint is due: one decision for all processes.

Before each step the loop asks :meth:`StopControl.agree`, which every process answers in a single
all-gather of two integers (:func:`zojax.train.hosts.agree`):

.. math::

    \mathrm{stop} = \max_p s_p, \qquad
    \mathrm{due} = \max_p \mathbb{1}[t_p - t^{\mathrm{saved}}_p \ge 60\,m]

where :math:`s_p` is process :math:`p`'s stop request (its signal number, 0 for ``stop_after`` or
:meth:`StopControl.request`, -1 for none) and :math:`m` is ``checkpoint_minutes`` (0: never due). A
SIGTERM that reached one process stops them all at the same step (one that lands during the
all-gather counts at the next step, on all), and a time-based checkpoint is saved by all of them at
the same step. An evaluation asks :meth:`StopControl.should_stop` before each of its forward passes
(the same all-gather, with :math:`m = 0`), so a stop requested during a long dev or test evaluation
stops it between two passes on every process: the trainer then checkpoints the last step and a
resume repeats that evaluation. One process: no all-gather.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from zojax.train import hosts


class StopControl:
    r"""Stop requests (signals, ``stop_after``, :meth:`request`) and the time since the last checkpoint.

    Attributes:
      signal: the stop request (a signal number, 0 for a programmatic stop), or ``None``.
      steps_this_process: steps taken since this process started.
      last_saved: the step of the last checkpoint (-1: none yet).
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.steps_this_process = 0
        self.last_saved = -1
        self._saved_at = time.perf_counter()

    def request(self, signum: int | None = None) -> None:
        """Asks the loop to checkpoint and stop after the current step."""
        self.signal = signum if signum is not None else 0

    def saved(self, step: int) -> None:
        """Records a checkpoint of ``step`` (the time-based interval starts again)."""
        self._saved_at = time.perf_counter()
        self.last_saved = step

    def restart_clock(self) -> None:
        """The time-based interval starts now (training starts, after setup and evaluation)."""
        self._saved_at = time.perf_counter()

    @contextlib.contextmanager
    def signals_handled(self) -> Iterator[None]:
        """SIGINT and SIGTERM request a stop while inside (a second Ctrl-C aborts at once).

        Outside the main thread (where Python cannot install handlers) nothing is installed.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            del frame
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal = signum
            sys.stderr.write(
                f"\n[zojax] {signal.Signals(signum).name}: finishing the current step or evaluation pass, "
                "then checkpointing (Ctrl-C again to abort at once)\n"
            )

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def agree(self, step: int, checkpoint_minutes: float) -> tuple[int | None, bool]:
        r"""What every process does before the next step (see the module docstring).

        Args:
          step: the step the run stands at.
          checkpoint_minutes: the time-based checkpoint interval :math:`m` (0: off).

        Returns:
          ``(stop, due)``: the agreed stop request (``None``: go on) and whether a time-based
          checkpoint of the last step's state is due (never before this process's first step, nor
          when that step was just saved).
        """
        due = (
            bool(checkpoint_minutes)
            and self.steps_this_process > 0
            and step != self.last_saved
            and time.perf_counter() - self._saved_at >= 60 * checkpoint_minutes
        )
        if hosts.count() == 1:
            return self.signal, due
        signum, any_due = hosts.agree([-1 if self.signal is None else self.signal, int(due)])
        if signum < 0:
            return None, bool(any_due)
        if self.signal is None:
            self.signal = signum
        return signum, bool(any_due)

    def should_stop(self) -> bool:
        """Whether an evaluation stops before its next forward pass: the agreed stop request of
        :meth:`agree` (never a checkpoint)."""
        return self.agree(self.last_saved, 0)[0] is not None
