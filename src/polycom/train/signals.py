"""Ctrl-C and SIGTERM during training: the first SIGINT or SIGTERM asks the loop to stop after the current
step (and save a checkpoint); a second one raises KeyboardInterrupt at once.

SIGTERM is what preemption, a batch scheduler's time limit (SLURM), ``docker stop`` and torchrun's agent send
before SIGKILL: it is handled like Ctrl-C so the run can be resumed from the step it reached.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Context manager installing the SIGINT / SIGTERM handler (main thread only; elsewhere it never triggers).

    `requested` turns True at the first signal and `signal_name` names it ("SIGINT", "SIGTERM"); the previous
    handlers are restored on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc) -> bool:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        return False
