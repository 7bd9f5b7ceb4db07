"""The text beside the live bars of `polycom train` and `polycom compare` (polycom.utils.progress)."""

from __future__ import annotations


def _info(progress, task) -> str:
    return next(t for t in progress.progress.tasks if t.id == task).fields["info"]


def test_train_bar_shows_loss_and_keeps_the_last_val_loss():
    from polycom.cli.train import _Progress

    with _Progress(4, enabled=False) as progress:
        progress.on_event({"step": 1, "loss": 2.0})
        assert _info(progress, progress.task) == "loss 2.000"
        progress.on_event({"step": 2, "loss": 1.5, "val_loss": 1.75})
        assert _info(progress, progress.task) == "loss 1.500  val 1.750"
        progress.on_event({"step": 3, "loss": 1.25})
        assert _info(progress, progress.task) == "loss 1.250  val 1.750"
        progress.on_event({"step": 3, "val_loss": 1.5})
        assert _info(progress, progress.task) == "  val 1.500"
        assert progress.progress.tasks[0].completed == 3


def test_compare_bars_forget_the_val_loss_at_a_new_run():
    from polycom.compare.progress import CompareProgress

    with CompareProgress(2, 4, enabled=False) as progress:
        progress.start_run("relu", 0)
        progress.on_event({"step": 2, "loss": 2.0, "val_loss": 2.5})
        assert _info(progress, progress.current) == "loss 2.000  val 2.500"
        progress.finish_run("relu", 0)
        progress.start_run("polynorm", 0)
        progress.on_event({"step": 1, "loss": 1.0})
        assert _info(progress, progress.current) == "loss 1.000"
        assert next(t for t in progress.progress.tasks if t.id == progress.total).completed == 5
