"""`polycom compare` as a library: a tiny comparison writes results.json, report.md, loss.png and run folders."""

import json
import math

import pytest

from polycom.compare import CompareConfig, run_compare, welch_p_value
from polycom.compare.plots import mean_band
from polycom.data import embedded_corpus_text
from polycom.errors import UserError
from tiny_run_args import TINY_RUN

SMALL = [
    *TINY_RUN,
    "--train.threads=1",  # robust to other processes on the cores (2-thread steps can stall)
    "--train.eval_batches=2",
    "--train.eval_interval=4",
    "--train.log_interval=2",
    "--optim.lr=1e-2",
]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "plays.txt"
    path.write_text(embedded_corpus_text()[:100_000])
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, text_file):
    out = tmp_path_factory.mktemp("cmp") / "out"
    cfg = CompareConfig(
        out=str(out), activations=["swiglu", "polynorm"], seeds=2, steps=8, data=str(text_file), overrides=SMALL
    )
    results = run_compare(cfg, show_progress=False)
    return out, cfg, results


@pytest.mark.slow  # trains 4 tiny models and imports scipy/matplotlib: ~10-20 s
def test_compare_writes_report_plot_and_runs(finished):
    out, _, results = finished
    for name in ("results.json", "report.md", "loss.png", "compare.json", "data/meta.json"):
        assert (out / name).is_file(), name
    for run in ("swiglu-s0", "swiglu-s1", "polynorm-s0", "polynorm-s1"):
        assert (out / "runs" / run / "checkpoints" / "latest").is_file()
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "loss.png").stat().st_size > 10_000
    saved = json.loads((out / "results.json").read_text())
    assert saved["activations"] == ["swiglu", "polynorm"]
    for act in ("swiglu", "polynorm"):
        entry = saved["results"][act]
        finals = entry["final_val_loss"]["values"]
        assert len(finals) == 2 and all(f < entry["initial_val_loss"]["mean"] for f in finals)
        assert entry["final_val_loss"]["mean"] == pytest.approx(sum(finals) / 2)
        assert entry["final_val_loss"]["std"] == pytest.approx(abs(finals[0] - finals[1]) / math.sqrt(2))
    # parameter matched: the two MLP widths give (nearly) the same parameter count
    ps = saved["results"]["swiglu"]["num_parameters"], saved["results"]["polynorm"]["num_parameters"]
    assert abs(ps[0] - ps[1]) / ps[0] < 0.02
    vs = saved["results"]["polynorm"]["vs_baseline"]
    assert vs["baseline"] == "swiglu" and vs["p_value"] is not None and 0 <= vs["p_value"] <= 1
    report = (out / "report.md").read_text()
    assert "| polynorm |" in report and "| swiglu |" in report and "±" in report and "loss.png" in report
    assert "### polynorm" in report  # text sample
    assert set(saved["samples"]) == {"swiglu", "polynorm"}


def test_same_data_order_for_every_activation(finished):
    out, _, _ = finished
    cfgs = [json.loads((out / "runs" / r / "config.json").read_text()) for r in ("swiglu-s1", "polynorm-s1")]
    assert cfgs[0]["train"] == cfgs[1]["train"] and cfgs[0]["data"] == cfgs[1]["data"]
    assert cfgs[0]["train"]["seed"] == 1


def test_finished_folder_is_refused_then_resume_reuses_runs(finished):
    out, cfg, _ = finished
    with pytest.raises(UserError, match="already holds a finished comparison"):
        run_compare(cfg, show_progress=False)
    ckpt = out / "runs" / "swiglu-s0" / "checkpoints" / "step_00000008.pt"
    mtime = ckpt.stat().st_mtime_ns
    resumed = CompareConfig(**{**cfg.__dict__, "resume": True})
    first_wall = json.loads((out / "results.json").read_text())["wall_s"]
    assert json.loads((out / "compare.json").read_text())["elapsed_s"] == pytest.approx(first_wall, abs=0.5)
    results = run_compare(resumed, show_progress=False)
    assert ckpt.stat().st_mtime_ns == mtime  # reused, not retrained
    assert results["wall_s"] > first_wall  # the total over both parts, not the resumed part's alone
    assert (
        results["results"]["swiglu"]["final_val_loss"]["values"]
        == json.loads((out / "results.json").read_text())["results"]["swiglu"]["final_val_loss"]["values"]
    )


def test_welch_p_value_matches_formula():
    from scipy import stats

    a, b = [2.10, 2.14, 2.08, 2.12], [2.01, 2.05, 2.03]
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    t = (ma - mb) / math.sqrt(se2)
    df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    expected = 2 * stats.t.sf(abs(t), df)
    assert welch_p_value(a, b) == pytest.approx(expected, rel=1e-9)
    assert welch_p_value([1.0], b) is None


def test_mean_band_over_seeds():
    steps, mean, std = mean_band([[(0, 1.0), (5, 3.0)], [(0, 3.0), (5, 5.0), (10, 9.0)]])
    assert steps.tolist() == [0, 5]  # only steps logged by every seed
    assert mean.tolist() == [2.0, 4.0]
    assert std.tolist() == pytest.approx([math.sqrt(2), math.sqrt(2)])


def test_bad_compare_arguments(tmp_path, text_file):
    with pytest.raises(UserError, match="unknown activation 'swish'"):
        run_compare(CompareConfig(out=str(tmp_path / "a"), activations=["swish"]), show_progress=False)
    with pytest.raises(UserError, match="seeds"):
        run_compare(CompareConfig(out=str(tmp_path / "b"), seeds=0), show_progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        run_compare(CompareConfig(out=str(tmp_path / "c"), data=str(text_file), overrides=SMALL), show_progress=False)
    assert (tmp_path / "c" / "precious.txt").read_text() == "keep me"


def _validation_line(data_folder) -> str:
    """Reference of the default prompt for byte tokens: the first non-empty line after the first newline."""
    import numpy as np

    raw = np.fromfile(data_folder / "val.bin", dtype=np.uint8)  # byte ids are < 256
    from polycom.data.shards import HEADER_SIZE

    text = raw[HEADER_SIZE : HEADER_SIZE + 4096].tobytes().decode("utf-8", errors="replace")
    line = next(line for line in text.split("\n")[1:] if line.strip())[:80].rstrip()
    return line.encode()[: 32 // 4 - 1].decode("utf-8", errors="ignore") + "\n"  # a quarter of the 32 context


def test_samples_continue_a_validation_line_and_finish_after_sampling(finished, monkeypatch):
    out, _, results = finished
    prompt = _validation_line(out / "data")
    assert results["sample_prompt"] == prompt and prompt != "ROMEO.\n"
    assert all(text.startswith(prompt) for text in results["samples"].values())
    assert json.dumps(prompt) in (out / "report.md").read_text()


def test_finished_is_stamped_after_the_samples(tmp_path, text_file, monkeypatch):
    from polycom.compare import runner

    events = []
    real = runner.generate_samples
    monkeypatch.setattr(runner, "generate_samples", lambda *a, **k: (events.append("samples"), real(*a, **k))[1])
    monkeypatch.setattr(runner, "_now", lambda: (events.append("finished"), "2000-01-01T00:00:00Z")[1])
    cfg = CompareConfig(
        out=str(tmp_path / "o"), activations=["relu"], steps=2, data=str(text_file), overrides=SMALL,
        sample_prompt="KING:\n",
    )  # fmt: skip
    results = run_compare(cfg, show_progress=False)
    assert events == ["samples", "finished"]
    assert results["samples"]["relu"].startswith("KING:\n")
    assert "Finished 2000-01-01T00:00:00Z" in (tmp_path / "o" / "report.md").read_text()


def test_report_only_rebuilds_report_plot_and_results_alone(finished, monkeypatch, capsys):
    from polycom.cli import main
    from polycom.compare import runner

    out, _, _ = finished
    before = json.loads((out / "results.json").read_text())
    ckpt = out / "runs" / "swiglu-s0" / "checkpoints" / "step_00000008.pt"
    mtime = ckpt.stat().st_mtime_ns
    for name in ("report.md", "loss.png", "results.json"):
        (out / name).unlink()
    monkeypatch.setattr(runner, "generate_samples", lambda *a, **k: pytest.fail("--report-only must not sample"))
    assert main(["compare", "--report-only", "--out", str(out)]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and ckpt.stat().st_mtime_ns == mtime
    after = json.loads((out / "results.json").read_text())
    assert after["results"]["polynorm"]["final_val_loss"] == before["results"]["polynorm"]["final_val_loss"]
    assert after["samples"] == {} and "No samples yet" in (out / "report.md").read_text()
    (out / "runs" / "polynorm-s1" / "metrics.jsonl").write_text("")  # an unfinished run is named
    assert main(["compare", "--report-only", "--out", str(out)]) == 2
    assert "run polynorm-s1 is not finished" in capsys.readouterr().err
    assert main(["compare", "--report-only", "--out", str(out / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_data_that_is_not_data_leaves_no_stub_comparison(tmp_path):
    not_data = tmp_path / "pictures"
    not_data.mkdir()
    (not_data / "cat.png").write_bytes(b"\x89PNG")
    cfg = CompareConfig(out=str(tmp_path / "o"), activations=["relu"], data=str(not_data), overrides=SMALL)
    for _ in range(2):  # the second attempt meets the same data error, not "an unfinished comparison"
        with pytest.raises(UserError) as err:
            run_compare(cfg, show_progress=False)
        assert "unfinished comparison" not in str(err.value)
    assert list((tmp_path / "o").iterdir()) == []


def test_compare_progress_starts_with_the_first_step_only():
    from polycom.compare.progress import CompareProgress

    with CompareProgress(2, 4, enabled=True) as progress:
        progress.start_run("relu", 0)  # then refused in its checks: no event
    assert not progress.progress.live.is_started
    with CompareProgress(2, 4, enabled=True) as progress:
        progress.start_run("relu", 0)
        progress.on_event({"step": 1, "loss": 2.0})
        assert progress.progress.live.is_started
