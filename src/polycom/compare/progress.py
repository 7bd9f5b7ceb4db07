"""Live display of a comparison: an overall bar over all runs and a bar for the current run."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class CompareProgress:
    def __init__(self, n_runs: int, steps: int, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.steps = steps
        self.progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.total = self.progress.add_task("all runs", total=n_runs * steps, info="")
        self.current = None
        self._done_steps = 0
        self._val: float | None = None
        self.started = False

    # The live bars start with the first training step or finished run, not on entry: a run refused in
    # its checks prints its error without empty bars flashing before it.
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started:
            self.progress.stop()
        return False

    def _start(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def start_run(self, activation: str, seed: int) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
        self._val = None
        self.current = self.progress.add_task(f"{activation} seed {seed}", total=self.steps, info="")

    def on_event(self, record: dict) -> None:
        self._start()
        step = record.get("step", 0)
        if "val_loss" in record:
            self._val = record["val_loss"]
        info = ""
        if "loss" in record:
            info = f"loss {record['loss']:.3f}"
        if self._val is not None:
            info += f"  val {self._val:.3f}"
        self.progress.update(self.current, completed=step, info=info)
        self.progress.update(self.total, completed=self._done_steps + step)

    def finish_run(self, activation: str, seed: int, *, result=None, skipped: bool = False) -> None:
        self._start()
        self._done_steps += self.steps
        self.progress.update(self.total, completed=self._done_steps)
        if skipped:
            self.console.print(f"{activation} seed {seed}: already finished, reused")
        elif result is not None:
            self.console.print(
                f"{activation} seed {seed}: val loss {result.initial_val_loss:.3f} -> {result.final_val_loss:.3f}"
                f"  ({result.tokens_per_s:,.0f} tokens/s, {result.wall_s:.0f} s)"
            )
