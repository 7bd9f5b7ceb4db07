"""Ctrl-C during training: the first SIGINT asks the loop to stop after the current step (and save a
checkpoint); a second one raises KeyboardInterrupt at once."""

from __future__ import annotations

import signal
import threading


class StopFlag:
    """Context manager installing the SIGINT handler (main thread only; elsewhere it never triggers).

    `requested` turns True at the first Ctrl-C; the previous handler is restored on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> bool:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
