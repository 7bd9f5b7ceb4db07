"""`polycom eval` without dependency noise: no lm-eval ``--metadata`` hint, no "fatal: not a git repository"
outside a checkout; lm-eval's other warnings still show, and nothing stays patched afterwards."""

from __future__ import annotations

import logging

from eval_runs import fake_run, one_torch_thread  # noqa: F401  (autouse fixture)

from polycom.cli import main
from polycom.eval.runner import quiet_lm_eval


def test_eval_tasks_print_no_metadata_hint_or_git_error(tmp_path, capfd, monkeypatch):
    folder, _ = fake_run(tmp_path / "run")
    outside = tmp_path / "not-a-checkout"
    outside.mkdir()
    monkeypatch.chdir(outside)  # lm-eval runs `git describe` in the working directory
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # even if tmp_path sits inside a checkout
    capfd.readouterr()
    assert main(["eval", "--model", str(folder), "--tasks", "polycom_tiny_mc", "--limit", "4"]) == 0
    out, err = capfd.readouterr()
    assert "| polycom_tiny_mc |" in out
    assert "--metadata" not in out + err and "Custom kwargs" not in err
    assert "fatal" not in err and "not a git repository" not in err


def test_quiet_lm_eval_drops_only_the_hint_and_restores(caplog):
    import lm_eval.evaluator as evaluator

    task_logger = logging.getLogger("lm_eval.api.task")
    original = evaluator.get_git_commit_hash
    with caplog.at_level(logging.WARNING, logger="lm_eval.api.task"), quiet_lm_eval():
        task_logger.warning("arc_easy: Custom kwargs can be passed to `--metadata` in console (as json string)")
        task_logger.warning("arc_easy: dataset has fewer documents than num_fewshot")  # a real warning
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["arc_easy: dataset has fewer documents than num_fewshot"]
    assert evaluator.get_git_commit_hash is original and not task_logger.filters
