"""The trainer's components: cadence, loss/throughput monitors, and the shared data resolver."""

import math

import pytest

from polycom.data import PrepareConfig, embedded_corpus_text
from polycom.data.resolve import open_prepared_folder, prepared_folder, resolve_prepared_data
from polycom.errors import UserError
from polycom.train.monitors import Cadence, LossMonitor, ThroughputMonitor


def test_cadence_log_eval_checkpoint():
    c = Cadence(steps=30, log_interval=5, eval_interval=10, checkpoint_interval=10)
    assert [s for s in range(1, 31) if c.should_log(s)] == [5, 10, 15, 20, 25, 30]
    assert [s for s in range(1, 31) if c.should_eval(s)] == [10, 20, 30]
    assert [s for s in range(1, 31) if c.should_checkpoint(s)] == [10, 20]  # the last step saves after the loop
    never = Cadence(steps=7, log_interval=3, eval_interval=0, checkpoint_interval=0)
    assert [s for s in range(1, 8) if never.should_log(s)] == [3, 6, 7]  # the last step evaluates, so it logs
    assert not any(never.should_checkpoint(s) for s in range(1, 8))


def test_loss_monitor_window_recent_and_divergence():
    m = LossMonitor(recent=3)
    for step, loss in enumerate([4.0, 3.0, 2.0, 1.0], start=1):
        m.step_done(step, loss)
    assert m.window_mean() == 2.5
    m.step_done(5, 0.5)
    assert m.window_mean() == 0.5  # a new window after each read
    assert m.final == pytest.approx((2.0 + 1.0 + 0.5) / 3)
    with pytest.raises(UserError, match="training diverged: loss is nan at step 6"):
        m.step_done(6, math.nan)


def test_throughput_and_mfu():
    t = ThroughputMonitor(tokens_per_step=1000, flops_per_token=6e6, peak_flops=1e12, world_size=2)
    t.step_done(0.5)
    t.step_done(1.5)
    tps = t.window_tokens_per_s()
    assert tps == 1000.0  # 2 steps x 1000 tokens / 2 s
    assert t.mfu(tps) == pytest.approx(6e6 * 1000 / (1e12 * 2))
    t.step_done(0.25)
    assert t.window_tokens_per_s() == 4000.0
    assert t.mean_tokens_per_s == 2500.0
    assert ThroughputMonitor(1000, 6e6, None, 1).mfu(1.0) is None


def test_resolver_prepares_once_replaces_half_prepared_and_uses_prepared_source(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(embedded_corpus_text()[:20_000])
    prepare = PrepareConfig(source=str(src))
    folder = tmp_path / "cache"
    half = prepared_folder(prepare, cache_dir=str(folder))
    half.mkdir(parents=True)
    (half / "train.bin").write_bytes(b"torn")  # an interrupted preparation: no meta.json
    shards = resolve_prepared_data(prepare, cache_dir=str(folder), show_progress=False)
    assert shards.folder == half and (half / "meta.json").is_file() and len(shards.train) > 0
    again = resolve_prepared_data(prepare, cache_dir=str(folder), show_progress=False)
    assert again.folder == half
    as_source = resolve_prepared_data(PrepareConfig(source=str(half)), folder=tmp_path / "unused")
    assert as_source.folder == half and not (tmp_path / "unused").exists()


def test_open_prepared_folder_errors(tmp_path):
    with pytest.raises(UserError, match="data.path .* not found"):
        open_prepared_folder(tmp_path / "missing")
    with pytest.raises(UserError, match="--data .* is not a prepared data folder"):
        open_prepared_folder(tmp_path, option="--data")
