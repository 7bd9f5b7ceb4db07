"""Live progress bars (rich) that start at the first update, not on entry: a run refused during its
checks (bad folder, bad checkpoint, bad data) prints its error without empty bars flashing before it.
Shared by `polycom train` (one bar) and `polycom compare` (an overall bar and one per run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import ProgressColumn


class DeferredProgress:
    """A context manager around `rich.progress.Progress(*columns)` on `console` (default: stderr).

    `start()` shows the bars (call it from every update); leaving the context stops them only when they
    were shown. `loss_info(record)` formats a training record as ``loss 2.345  val 2.400``, keeping the
    last validation loss until the next one (set ``val = None`` to forget it, e.g. at a new run).
    """

    def __init__(self, *columns: ProgressColumn, console: Console | None = None, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import Progress

        self.console = console or Console(stderr=True)
        self.progress = Progress(*columns, console=self.console, disable=not enabled)
        self.started = False
        self.val: float | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started:
            self.progress.stop()
        return False

    def start(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def loss_info(self, record: dict) -> str:
        if "val_loss" in record:
            self.val = record["val_loss"]
        info = f"loss {record['loss']:.3f}" if "loss" in record else ""
        if self.val is not None:
            info += f"  val {self.val:.3f}"
        return info
