"""The recipe of a comparison and the TrainConfig of each run, checked against `polycom train`'s own loader.

The reference of every run config is what ``polycom train --preset P --section.key=value ...`` resolves
for the recipe's documented numbers (docs/training.md), written here as override strings.
"""

import copy
from pathlib import Path

import pytest
import torch

from polycom.compare import CompareConfig, build_run_config, load_recipe, recipe_path
from polycom.errors import UserError
from polycom.train.config import load_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
DATA = Path("/data/shards")

# (preset, max_seq_len, batch, steps, lr, warmup, eval_interval, eval_batches, log_interval) per device
DOCUMENTED = {
    "cpu": ("tiny", 128, 16, 250, 3e-3, 25, 50, 8, 10),
    "cuda": ("small", 512, 32, 2000, 1e-3, 100, 200, 16, 20),
}


def reference(device: str, activation: str, seed: int, vocab: int, *, steps=None, preset=None, overrides=()):
    name, seq, batch, rsteps, lr, warmup, eval_every, eval_batches, log_every = DOCUMENTED[device]
    steps = rsteps if steps is None else steps
    return load_config(
        preset=preset or name,
        overrides=[
            f"--model.activation={activation}",
            f"--model.vocab_size={vocab}",
            f"--model.max_seq_len={seq}",
            f"--train.steps={steps}",
            f"--train.batch_size={batch}",
            f"--train.seed={seed}",
            f"--train.eval_interval={min(eval_every, max(1, steps // 5))}",
            f"--train.eval_batches={eval_batches}",
            f"--train.log_interval={min(log_every, steps)}",
            "--train.keep_checkpoints=1",
            '--train.device="auto"',
            "--train.threads=-1",
            f"--optim.lr={lr}",
            f"--optim.warmup_steps={min(warmup, max(1, steps // 10))}",
            f'--data.path="{DATA}"',
            *overrides,
        ],
    )


def test_recipe_files_ship_with_the_package():
    assert recipe_path(CPU).name == "cpu.toml" and recipe_path(CPU).is_file()
    assert recipe_path(CUDA).name == "cuda.toml" and recipe_path(CUDA).is_file()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"steps": 3},  # caps: log interval at the steps, eval at max(1, steps // 5), warmup at max(1, steps // 10)
        {"steps": 60},  # eval every 12 steps: a curve, not a line from step 0 to 50
        {"steps": 1},
        {"preset": "small"},
        {"overrides": ["--model.d_model=256", "--optim.lr=0.01", "--train.keep_checkpoints=3", "--parallel.tp=1"]},
    ],
)
def test_run_config_matches_the_train_loader(device, kwargs):
    cfg = CompareConfig(out="unused", **kwargs)
    recipe = load_recipe(torch.device(device), cfg.preset)
    for activation, seed, vocab in (("swiglu", 0, 256), ("polynorm", 2, 300)):
        got = build_run_config(cfg, recipe, activation, seed, DATA, vocab)
        want = reference(device, activation, seed, vocab, steps=cfg.steps, preset=cfg.preset, overrides=cfg.overrides)
        assert got.to_dict() == want.to_dict()


def test_runs_differ_only_in_activation_and_seed_and_leave_the_recipe_alone():
    recipe = load_recipe(CPU)
    before = copy.deepcopy(recipe.to_dict())
    cfg = CompareConfig(
        out="unused",
        overrides=["--parallel.activation_checkpointing=true", "--model.n_layers=3", "--data.val_fraction=0.1"],
    )
    a = build_run_config(cfg, recipe, "swiglu", 0, DATA, 256).to_dict()
    b = build_run_config(cfg, recipe, "polynorm", 1, DATA, 256).to_dict()
    assert recipe.to_dict() == before
    assert a["model"].pop("activation") == "swiglu" and b["model"].pop("activation") == "polynorm"
    assert a["train"].pop("seed") == 0 and b["train"].pop("seed") == 1
    assert a == b
    assert a["model"]["n_layers"] == 3 and a["data"]["val_fraction"] == 0.1


def test_activation_override_and_bad_overrides_are_refused():
    recipe = load_recipe(CPU)
    with pytest.raises(UserError, match="--activations"):
        build_run_config(CompareConfig(out="x", overrides=["--model.activation=gelu"]), recipe, "swiglu", 0, DATA, 256)
    with pytest.raises(UserError, match="train.bogus"):
        build_run_config(CompareConfig(out="x", overrides=["--train.bogus=1"]), recipe, "swiglu", 0, DATA, 256)
    with pytest.raises(UserError, match="exceeds model.max_seq_len"):
        bad = CompareConfig(out="x", overrides=["--train.seq_len=129"])
        build_run_config(bad, recipe, "swiglu", 0, DATA, 256)
    with pytest.raises(UserError, match="unknown model preset 'nope'"):
        load_recipe(CPU, "nope")


@pytest.mark.parametrize("device, every", [("cpu", 50), ("cuda", 200)])
def test_default_comparison_keeps_the_recipe_eval_interval_and_short_runs_scale_it(device, every):
    recipe = load_recipe(torch.device(device))
    default = build_run_config(CompareConfig(out="unused"), recipe, "polynorm", 0, DATA, 256)
    assert default.train.eval_interval == every  # the default comparison's losses do not change
    short = build_run_config(CompareConfig(out="unused", steps=60), recipe, "polynorm", 0, DATA, 256)
    assert short.train.eval_interval == 12  # steps 0, 12, ..., 60: six points on the validation curve


def test_named_recipes_keep_their_eval_interval():
    from polycom.compare.recipe import load_named_recipe, named_recipes

    for name in named_recipes():
        named = load_named_recipe(name)
        run = build_run_config(CompareConfig(out="unused"), named.train, named.activations[0], 0, DATA, 256)
        assert run.train.eval_interval == named.train.train.eval_interval, name
