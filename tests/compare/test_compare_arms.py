"""Arms with options, named recipes, the shared-initialisation invariant and the validation schedule."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from polycom.compare import CompareConfig, build_run_config, load_recipe
from polycom.compare.arms import parse_arm, parse_arms
from polycom.compare.layout import run_name
from polycom.compare.recipe import load_named_recipe, named_recipes, resolve_comparison
from polycom.errors import UserError
from polycom.models import build_model
from polycom.train.config import load_config
from polycom.train.monitors import Cadence

CPU = torch.device("cpu")
DATA = Path("/data/shards")


def test_arm_labels_options_and_folders():
    arm = parse_arm("PolyNorm:order=2")
    assert (arm.label, arm.activation, arm.options) == ("polynorm:order=2", "polynorm", {"order": 2})
    assert arm.model_fields() == {"activation": "polynorm", "activation_order": 2}
    general = parse_arm("polycom:base=silu:composition=2:eps=1e-5")
    assert general.options == {"base": "silu", "composition": 2, "eps": 1e-5}
    assert general.model_fields()["activation_options"] == {"base": "silu", "composition": 2, "eps": 1e-5}
    assert parse_arm("swiglu").model_fields() == {"activation": "swiglu"}
    assert run_name("polynorm:order=2", 1) == "polynorm-order=2-s1" and run_name("swiglu", 0) == "swiglu-s0"


@pytest.mark.parametrize(
    "text, match",
    [
        ("polynrm", "unknown activation 'polynrm'.*did you mean: polynorm"),
        ("polynorm:order", "must look like key=value"),
        ("polynorm:order=2:order=3", "given twice"),
        ("relu:order=2", "does not take order"),
        ("polynorm:base=relu", "does not take base"),
        ("polyrelu:order=0", "order must be an integer >= 1"),
    ],
)
def test_bad_arms_are_refused(text, match):
    with pytest.raises(UserError, match=match):
        parse_arm(text)


def test_duplicate_and_empty_arm_lists_are_refused():
    with pytest.raises(UserError, match="listed twice"):
        parse_arms(["polynorm:order=3", "PolyNorm:order=3"])
    with pytest.raises(UserError, match="no activations"):
        parse_arms([" "])


def test_arm_options_give_the_same_run_config_as_the_train_overrides():
    recipe = load_recipe(CPU)
    cfg = CompareConfig(out="x")
    got = build_run_config(cfg, recipe, "polynorm:order=2", 1, DATA, 256)
    plain = build_run_config(
        CompareConfig(out="x", overrides=["--model.activation_order=2"]), recipe, "polynorm", 1, DATA, 256
    )
    assert got.to_dict() == plain.to_dict()
    general = build_run_config(cfg, recipe, "polycom:base=prelu:composition=2", 0, DATA, 256)
    assert general.model.activation_options == {"base": "prelu", "composition": 2}
    assert recipe.model.activation_options == {}  # the recipe is left alone
    with pytest.raises(UserError, match="changes the options of arm 'polynorm:order=2'"):
        build_run_config(
            CompareConfig(out="x", overrides=["--model.activation_order=4"]), recipe, "polynorm:order=2", 0, DATA, 256
        )


def test_named_recipes_ship_and_resolve():
    assert {"main", "order-ablation", "composition-ablation", "relu-variants", "moe"} <= set(named_recipes())
    main = load_named_recipe("main")
    assert main.seeds >= 5 and main.baseline == "swiglu" and len(main.activations) == 6
    assert main.train.train.eval_seed >= 0 and main.train.train.eval_dense_interval > 0
    order = load_named_recipe("order-ablation")
    assert {parse_arm(a).label for a in order.activations} >= {"polynorm:order=2", "polyrelu:order=4"}
    assert load_named_recipe("moe").train.model.moe is not None
    cfg, recipe, arms = resolve_comparison(CompareConfig(out="x", recipe="composition-ablation"), CPU)
    assert cfg.activations == ["polyrelu", "polyprelu", "polynorm", "polyrelunorm"] and cfg.seeds == main.seeds
    assert cfg.baseline == "polynorm" and recipe.train.eval_seed == 0
    cfg, _, _ = resolve_comparison(CompareConfig(out="x", recipe="main", seeds=2, activations=["relu", "gelu"]), CPU)
    assert (cfg.seeds, cfg.activations, cfg.baseline) == (2, ["relu", "gelu"], "relu")  # recipe's baseline dropped


def test_default_comparison_is_unchanged_by_recipes():
    cfg, recipe, arms = resolve_comparison(CompareConfig(out="x"), CPU)
    assert cfg.activations == ["swiglu", "gelu", "relu", "relu2", "polyrelu", "polynorm"]
    assert (cfg.seeds, cfg.baseline) == (1, "swiglu")
    assert recipe.to_dict() == load_recipe(CPU).to_dict()
    assert recipe.train.eval_seed == -1 and recipe.train.eval_dense_from == 0  # validation as before


@pytest.mark.parametrize(
    "text, match",
    [("nope", "unknown comparison recipe 'nope'"), ("main", "not one of the arms")],
)
def test_bad_recipe_or_baseline(text, match):
    baseline = "polynorm:order=4" if text == "main" else None
    with pytest.raises(UserError, match=match):
        resolve_comparison(CompareConfig(out="x", recipe=text, baseline=baseline), CPU)


def _shared_state(cfg) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg.train.seed)  # as the trainer does before build_model
    model = build_model(cfg.model)
    return {k: v for k, v in model.state_dict().items() if ".mlp." not in k}


ARMS = [
    "swiglu",
    "polynorm",
    "polynorm:order=2",
    "polyrelu:order=4",
    "polycom:base=silu:composition=2",
    "polyprelu",
    "relu",
]


@pytest.mark.parametrize(
    "overrides", [[], ["--model.hidden_size=200"], ["--model.n_layers=3", "--model.multiple_of=48"]]
)
def test_shared_parts_start_bitwise_identical_across_arms(overrides):
    recipe = load_recipe(CPU)
    cfg = CompareConfig(out="x", overrides=overrides)
    for seed in (0, 1):
        states = {a: _shared_state(build_run_config(cfg, recipe, a, seed, DATA, 256)) for a in ARMS}
        ref = states["swiglu"]
        assert len(ref) >= 10
        for arm, state in states.items():
            assert state.keys() == ref.keys(), arm
            for key in ref:
                assert torch.equal(state[key], ref[key]), f"{arm}: {key} differs from swiglu's (seed {seed})"
    seed0 = _shared_state(build_run_config(cfg, recipe, "swiglu", 0, DATA, 256))
    assert not torch.equal(seed0["embed.weight"], ref["embed.weight"])  # the seed does change the init


def test_moe_arms_share_their_attention_and_embeddings():
    named = load_named_recipe("moe")
    cfg = CompareConfig(out="x")
    a = _shared_state(build_run_config(cfg, named.train, "swiglu", 0, DATA, 256))
    b = _shared_state(build_run_config(cfg, named.train, "polynorm", 0, DATA, 256))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dense_evaluation_near_the_end_and_a_fixed_validation_set():
    base = load_config(overrides=["--train.steps=100", "--train.eval_interval=50"])
    dense = replace(base.train, eval_dense_from=80, eval_dense_interval=5)
    evals = [s for s in range(1, 101) if Cadence.from_config(dense).should_eval(s)]
    assert evals == [50, 80, 85, 90, 95, 100]
    assert [s for s in range(1, 101) if Cadence.from_config(base.train).should_eval(s)] == [50, 100]
    with pytest.raises(UserError, match="eval_dense_interval >= 1"):
        load_config(overrides=["--train.eval_dense_from=10"])
