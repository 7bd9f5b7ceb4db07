"""Live display of a comparison: an overall bar over all runs and a bar for the current run."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from polycom.utils.progress import DeferredProgress


class CompareProgress(DeferredProgress):
    """The bars start with the first training step or finished run (`polycom.utils.progress`)."""

    def __init__(self, n_runs: int, steps: int, *, enabled: bool = True, console: Console | None = None) -> None:
        super().__init__(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            enabled=enabled,
        )
        self.enabled = enabled
        self.steps = steps
        self.total = self.progress.add_task("all runs", total=n_runs * steps, info="")
        self.current = None
        self._done_steps = 0

    def start_run(self, activation: str, seed: int) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
        self.val = None
        self.current = self.progress.add_task(f"{activation} seed {seed}", total=self.steps, info="")

    def on_event(self, record: dict) -> None:
        self.start()
        step = record.get("step", 0)
        self.progress.update(self.current, completed=step, info=self.loss_info(record))
        self.progress.update(self.total, completed=self._done_steps + step)

    def finish_run(self, activation: str, seed: int, *, result=None, skipped: bool = False) -> None:
        self.start()
        self._done_steps += self.steps
        self.progress.update(self.total, completed=self._done_steps)
        if skipped:
            self.console.print(f"{activation} seed {seed}: already finished, reused")
        elif result is not None:
            self.console.print(
                f"{activation} seed {seed}: val loss {result.initial_val_loss:.3f} -> {result.final_val_loss:.3f}"
                f"  ({result.tokens_per_s:,.0f} tokens/s, {result.wall_s:.0f} s)"
            )
