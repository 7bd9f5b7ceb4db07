"""The torchtitan config registry (``--module polycom.integrations.torchtitan --config NAME``).

Each config is built the way torchtitan's trainer builds it (``update_from_config``, the override factories
of ``override.imports``, a meta-device build, ``to_empty``, ``init_weights``) and checked against polycom's
own harness model and run configs: which layers are PolyCom, parameter counts, init, widths, a forward, the
optimizer groups, and that the trainer settings are derived from the polycom TOML rather than copied.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torchtitan.components.optimizer.optimizer import default_adamw
from torchtitan.config.override import apply_overrides
from torchtitan.models.common.feed_forward import FeedForward
from torchtitan.models.common.moe import GroupedExperts

from polycom.integrations.torchtitan import PolyComActivation, PolyComFeedForward, PolyComGroupedExperts, recipes
from polycom.integrations.torchtitan import config_registry as registry
from polycom.integrations.torchtitan.models import EXPERTS_OVERRIDE, FFN_OVERRIDE, polycom_twin
from polycom.integrations.torchtitan.optimizer import COEFFICIENT_PATTERN, VECTOR_PATTERN, polycom_optimizer
from polycom.integrations.torchtitan.recipes import PAPER_DP_RANKS, config_names, trainer_config
from polycom.models import build_model, get_preset
from polycom.train.config import bundled_config, load_config

PAPER = {  # registry name -> (bundled polycom run config, activation override)
    "polycom_paper_1b": ("paper-1b", None),
    "polycom_paper_1b_swiglu": ("paper-1b", "swiglu"),
    "polycom_paper_moe_1b_7b": ("paper-moe-1b-7b", None),
    "polycom_paper_moe_1b_7b_swiglu": ("paper-moe-1b-7b", "swiglu"),
}
DEBUG = [name for name in config_names() if name.startswith("polycom_debug_")]
ORDER = 3  # the PolyNorm / PolyReLU order of every registry config: r + 1 = 4 coefficients per activation


def polycom_model_config(name: str):
    """The polycom ModelConfig registry config `name` is derived from."""
    if name in PAPER:
        run, activation = PAPER[name]
        return load_config(
            bundled_config(run), overrides=[] if activation is None else [f"model.activation={activation}"]
        ).model
    activation = name.rsplit("_", 1)[1]
    preset = "moe-tiny" if "_moe_" in name else "tiny"
    return get_preset(preset, vocab_size=recipes.DEBUG_VOCAB, max_seq_len=recipes.DEBUG_SEQ_LEN, activation=activation)


def twin(name: str) -> str:
    """The SwiGLU baseline of PolyCom config `name`."""
    return re.sub(r"_(polynorm|polyrelu)$", "_swiglu", name) if name.startswith("polycom_debug_") else f"{name}_swiglu"


def prepared(name: str, n_layers: int | None = None):
    """(Trainer.Config, decoder config) after torchtitan's config steps; optionally cut to `n_layers` blocks."""
    cfg = getattr(registry, name)()
    mcfg = cfg.model_spec.model
    mcfg.update_from_config(config=cfg)
    apply_overrides(cfg.override, cfg)
    if n_layers is not None:
        mcfg.layers = mcfg.layers[:n_layers]
    return cfg, mcfg


def build_meta(name: str, n_layers: int | None = None):
    cfg, mcfg = prepared(name, n_layers)
    with torch.device("meta"):
        model = mcfg.build()
    model.verify_module_protocol()
    return cfg, model


def materialise(model):
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    return model


def forward(model, vocab: int, batch: int, seq: int):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    pos = torch.arange(seq).repeat(batch, 1)
    with torch.no_grad():  # FlexAttention has no CPU backward
        return model(ids, pos, model.get_attention_masks(pos))


def ffns(model) -> list:
    """Each block's MLP: the dense feed-forward or the MoE's grouped experts."""
    out = []
    for block in model.layers.values():
        out.append(
            block.moe.routed_experts.inner_experts if getattr(block, "moe", None) is not None else block.feed_forward
        )
    return out


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_config():
    assert sorted(config_names()) == sorted(
        [f"polycom_debug_{a}" for a in ("swiglu", "polynorm", "polyrelu")]
        + [f"polycom_debug_moe_{a}" for a in ("swiglu", "polynorm", "polyrelu")]
        + list(PAPER)
    )
    for name in config_names():
        assert callable(getattr(registry, name))


@pytest.mark.parametrize("name", config_names())
def test_registry_train_config_is_the_polycom_source(name):
    """`train_config(name)` (what export rebuilds) is the run config this file derives independently."""
    assert recipes.train_config(name).model == polycom_model_config(name)


# --- 1. every config on the meta device --------------------------------------------------------------------


@pytest.mark.parametrize("name", config_names())
def test_config_builds_with_polycom_layers_in_every_block(name):
    mc = polycom_model_config(name)
    cfg, model = build_meta(name)
    assert len(model.layers) == mc.n_layers
    assert model.tok_embeddings.weight.shape == (mc.vocab_size, mc.d_model)
    layers = ffns(model)
    moe = mc.moe is not None
    stock, poly = (GroupedExperts, PolyComGroupedExperts) if moe else (FeedForward, PolyComFeedForward)
    if mc.activation_name == "swiglu":
        assert cfg.override.imports == []
        assert all(type(m) is stock for m in layers), {type(m).__name__ for m in layers}
        assert not any(isinstance(m, PolyComActivation) for m in model.modules())
    else:
        assert [imp[0] for imp in cfg.override.imports] == [EXPERTS_OVERRIDE if moe else FFN_OVERRIDE]
        assert all(isinstance(m, poly) for m in layers), {type(m).__name__ for m in layers}
        assert all(m.act.activation.split(":")[0] == mc.activation_name for m in layers)
        assert all(m.act.weight.shape == (ORDER,) and m.act.bias.shape == (1,) for m in layers)
        assert all(m.act.weight.is_meta for m in layers)


@pytest.mark.parametrize("name", [n for n in config_names() if not n.endswith("_swiglu")])
def test_parameter_count_is_swiglu_twin_plus_coefficients(name):
    mc = polycom_model_config(name)
    _, model = build_meta(name)
    _, baseline = build_meta(twin(name))
    coefficients = sum(p.numel() for n, p in model.named_parameters() if ".act." in n)
    assert coefficients == (ORDER + 1) * mc.n_layers  # dense, or MoE with shared coefficients
    assert mc.moe is None or mc.moe.shared_coefficients
    assert n_params(model) == n_params(baseline) + coefficients


@pytest.mark.parametrize("name", config_names())
def test_parameter_count_matches_polycom_harness_model(name):
    """Same count as polycom's own model of the config's `polycom_twin` (models.py docstring: with QK-norm
    torchtitan normalises each head, gains of head_dim, where OLMoE normalises the whole q / k projection)."""
    mc = polycom_model_config(name)
    _, model = build_meta(name)
    assert n_params(model) == build_model(polycom_twin(mc), device="meta").num_parameters()
    qk_norm_difference = mc.n_layers * 2 * (mc.d_model - mc.d_model // mc.n_heads) if mc.qk_norm else 0
    assert n_params(model) == build_model(mc, device="meta").num_parameters() - qk_norm_difference
    assert mc.qk_norm == (name.startswith("polycom_paper_moe"))  # the difference is exercised, and only there


def test_paper_model_sizes():
    assert round(n_params(build_meta("polycom_paper_1b")[1]) / 1e9, 1) == 1.3
    assert round(n_params(build_meta("polycom_paper_moe_1b_7b")[1]) / 1e9, 1) == 6.9


# --- 2. debug configs: materialised, initialised, a CPU forward ---------------------------------------------


@pytest.mark.parametrize("name", DEBUG)
def test_debug_config_forward_and_init(name):
    mc = polycom_model_config(name)
    _, model = build_meta(name)
    materialise(model)
    assert not any(p.is_meta for p in model.parameters())
    if mc.activation_name != "swiglu":
        for m in ffns(model):
            assert torch.equal(m.act.weight, torch.full((ORDER,), 1 / ORDER))
            assert torch.equal(m.act.bias, torch.zeros(1))
    logits = forward(model, mc.vocab_size, 2, 16)
    assert logits.shape == (2, 16, mc.vocab_size)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0


# --- 3. paper configs: widths on the full config, a forward on a 1-layer copy --------------------------------


def test_paper_dense_widths_and_one_layer_forward():
    mc = polycom_model_config("polycom_paper_1b")
    _, model = build_meta("polycom_paper_1b", n_layers=1)
    assert len(model.layers) == 1
    ffn = model.layers["0"].feed_forward
    assert isinstance(ffn, PolyComFeedForward) and ffn.mode == "ungated"
    assert ffn.w1.weight.shape == (8256, mc.d_model) and 8256 == 1.5 * 5504
    assert ffn.w2.weight.shape == (mc.d_model, 8256)
    assert getattr(ffn, "w3", None) is None
    _, baseline = build_meta("polycom_paper_1b_swiglu", n_layers=1)
    assert baseline.layers["0"].feed_forward.w1.weight.shape == (5504, mc.d_model)
    materialise(model)
    assert torch.equal(ffn.act.weight, torch.full((ORDER,), 1 / ORDER))
    assert torch.equal(ffn.act.bias, torch.zeros(1))
    logits = forward(model, mc.vocab_size, 2, 8)
    assert logits.shape == (2, 8, mc.vocab_size) and torch.isfinite(logits).all()


def test_paper_moe_widths():
    mc = polycom_model_config("polycom_paper_moe_1b_7b")
    _, model = build_meta("polycom_paper_moe_1b_7b", n_layers=1)
    moe = model.layers["0"].moe
    experts = moe.routed_experts.inner_experts
    assert isinstance(experts, PolyComGroupedExperts) and experts.mode == "ungated" and experts.shared_coefficients
    assert experts.w1_EFD.shape == (64, 1536, mc.d_model) and 1536 == 1.5 * 1024
    assert experts.w2_EDF.shape == (64, mc.d_model, 1536)
    assert moe.router.gate.weight.shape == (64, mc.d_model)
    assert moe.router.top_k == 8
    _, baseline = build_meta("polycom_paper_moe_1b_7b_swiglu", n_layers=1)
    assert baseline.layers["0"].moe.routed_experts.inner_experts.w1_EFD.shape == (64, 1024, mc.d_model)


def test_paper_moe_one_layer_forward():
    """The matrices get a plain normal fill: torchtitan's truncated-normal init of the 64 x 1536 x 2048 experts
    takes about a minute on 2 CPU cores (the debug MoE configs run the real init_weights); the coefficients and
    buffers still go through the Module protocol's init."""
    from polycom.integrations.torchtitan import PolyComActivation

    mc = polycom_model_config("polycom_paper_moe_1b_7b")
    _, model = build_meta("polycom_paper_moe_1b_7b", n_layers=1)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        for module in model.modules():
            if isinstance(module, PolyComActivation):
                module.init_states()
        # the buffers alone (RoPE tables, MoE counters): init_states would recurse into the experts' init
        model.layers["0"].moe._init_self_buffers(buffer_device=torch.device("cpu"))
        model.layers["0"].attention.rope._init_self_buffers(buffer_device=torch.device("cpu"))
    experts = model.layers["0"].moe.routed_experts.inner_experts
    assert torch.equal(experts.act.weight, torch.full((ORDER,), 1 / ORDER))
    assert torch.equal(experts.act.bias, torch.zeros(1))
    logits = forward(model, mc.vocab_size, 2, 8)
    assert logits.shape == (2, 8, mc.vocab_size) and torch.isfinite(logits).all()


# --- 4. trainer settings derived from the polycom run config ------------------------------------------------


def groups_by_pattern(cfg) -> dict:
    return {g.pattern: g for g in cfg.optimizer.param_groups}


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_trainer_config_is_derived_from_polycom_toml(name):
    run, activation = PAPER[name]
    tc = load_config(bundled_config(run), overrides=[] if activation is None else [f"model.activation={activation}"])
    optim, loop = tc.optim, tc.train
    cfg = getattr(registry, name)()
    kwargs = {"lr": optim.lr, "betas": (optim.beta1, optim.beta2), "eps": optim.eps, "weight_decay": optim.weight_decay}
    groups = groups_by_pattern(cfg)
    assert cfg.optimizer.param_groups[-1].pattern == ".*"
    assert cfg.optimizer.param_groups[-1].optimizer_kwargs == kwargs
    no_decay = kwargs | {"weight_decay": 0.0}
    assert (COEFFICIENT_PATTERN in groups) == (activation is None)
    assert (VECTOR_PATTERN in groups) == (not optim.decay_vectors)
    assert optim.decay_vectors == (run == "paper-moe-1b-7b")  # both branches are exercised
    for pattern in (COEFFICIENT_PATTERN, VECTOR_PATTERN):
        if pattern in groups:
            assert groups[pattern].optimizer_kwargs == no_decay
    if activation is None:
        assert cfg.optimizer.param_groups[0].pattern == COEFFICIENT_PATTERN  # first match wins
    assert all(g.optimizer_name == "AdamW" for g in cfg.optimizer.param_groups)

    sched = cfg.lr_scheduler
    assert sched.warmup_steps == optim.warmup_steps
    assert sched.total_steps == (optim.schedule_steps or None)
    assert sched.decay_type == "cosine"
    assert sched.min_lr_factor == optim.min_lr_ratio

    tr = cfg.training
    assert tr.local_batch_size == loop.batch_size
    assert tr.global_batch_size == loop.batch_size * loop.grad_accum * PAPER_DP_RANKS
    assert tr.seq_len == (loop.seq_len or tc.model.max_seq_len) == 4096
    assert tr.steps == loop.steps
    assert tr.max_norm == optim.grad_clip
    assert tr.mixed_precision_param == "bfloat16"
    assert cfg.loss.loss_fn.global_vocab_size == tc.model.vocab_size


@pytest.mark.parametrize(
    ("name", "tokens_per_step", "steps", "warmup", "total_steps"),
    [
        ("polycom_paper_1b", 262_144, 953_675, 2365, None),
        ("polycom_paper_moe_1b_7b", 4_194_304, 47_684, 2500, 1_192_093),
    ],
)
def test_paper_numbers_stated_in_toml_comments(name, tokens_per_step, steps, warmup, total_steps):
    """The numbers the bundled TOMLs state in words (their comments), read through the registry."""
    cfg = getattr(registry, name)()
    assert cfg.training.global_batch_size * cfg.training.seq_len == tokens_per_step
    assert cfg.training.steps == steps
    assert cfg.lr_scheduler.warmup_steps == warmup
    assert cfg.lr_scheduler.total_steps == total_steps


@pytest.mark.parametrize("run", ["paper-1b", "paper-moe-1b-7b"])
def test_trainer_config_follows_a_changed_run_config(run):
    tc = load_config(bundled_config(run))
    base = trainer_config(tc, "x", dp_ranks=PAPER_DP_RANKS)
    changed = load_config(
        bundled_config(run),
        overrides=[
            "optim.lr=1.25e-3",
            "optim.beta2=0.99",
            "optim.eps=1e-6",
            "optim.weight_decay=0.05",
            "optim.warmup_steps=7",
            "optim.schedule_steps=1000",
            "optim.min_lr_ratio=0.25",
            "optim.grad_clip=0.5",
            "optim.decay_vectors=" + ("false" if tc.optim.decay_vectors else "true"),
            "train.steps=123",
            "train.batch_size=3",
            "train.grad_accum=5",
            "model.max_seq_len=512",
        ],
    )
    cfg = trainer_config(changed, "x", dp_ranks=2)
    catch_all = cfg.optimizer.param_groups[-1].optimizer_kwargs
    assert catch_all == {"lr": 1.25e-3, "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.05}
    assert catch_all != base.optimizer.param_groups[-1].optimizer_kwargs
    assert (VECTOR_PATTERN in groups_by_pattern(cfg)) == tc.optim.decay_vectors  # flipped
    assert (cfg.lr_scheduler.warmup_steps, cfg.lr_scheduler.total_steps, cfg.lr_scheduler.min_lr_factor) == (
        7,
        1000,
        0.25,
    )
    assert cfg.training.max_norm == 0.5 and cfg.training.steps == 123
    assert (cfg.training.local_batch_size, cfg.training.global_batch_size) == (3, 3 * 5 * 2)
    assert cfg.training.seq_len == 512
    assert cfg.model_spec.model.layers[0].attention.rope.max_seq_len == 512


def test_registry_configs_are_fresh_objects():
    """torchtitan mutates the config it is given (update_from_config, overrides, CLI): each call is new."""
    a, b = registry.polycom_debug_polynorm(), registry.polycom_debug_polynorm()
    assert a is not b and a.model_spec.model is not b.model_spec.model
    a.training.steps = 1
    assert b.training.steps == 10


# --- 5. optimizer groups on a real model ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["polycom_debug_polynorm", "polycom_debug_moe_polyrelu", "polycom_debug_swiglu"])
def test_optimizer_groups_on_the_debug_model(name):
    cfg, model = build_meta(name)
    materialise(model)
    optimizers = cfg.optimizer.build(model_parts=[model])
    decay = {}
    for opt in optimizers.optimizers:
        for group in opt.param_groups:
            for pname in group["param_names"]:
                assert pname not in decay, f"{pname} in two groups"
                decay[pname] = group["weight_decay"]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(decay) == sorted(names)  # every parameter in exactly one group
    coefficients = [n for n in names if ".act." in n]
    assert bool(coefficients) == (not name.endswith("swiglu"))
    for n in names:
        shape = dict(model.named_parameters())[n].shape
        if ".act." in n or len(shape) == 1:  # coefficients; norm gains (decay_vectors False in debug configs)
            assert decay[n] == 0.0, n
        else:
            assert decay[n] == 0.1, n
    assert any(n.endswith("norm.weight") for n in names)
    assert sum(len(g["params"]) for o in optimizers.optimizers for g in o.param_groups) == len(names)


def test_polycom_optimizer_override():
    base = default_adamw(lr=1e-3)
    out = polycom_optimizer(base)
    first, *rest = out.param_groups
    assert first.pattern == COEFFICIENT_PATTERN
    assert first.optimizer_name == base.param_groups[0].optimizer_name
    template = base.param_groups[0].optimizer_kwargs
    assert first.optimizer_kwargs == dict(template) | {"weight_decay": 0.0}
    assert first.optimizer_kwargs["lr"] == 1e-3 and first.optimizer_kwargs["betas"] == template["betas"]
    assert template["weight_decay"] != 0.0  # the override did not touch the existing group
    assert rest == base.param_groups
    assert dataclasses.replace(out) == polycom_optimizer(out)  # idempotent
    assert len(polycom_optimizer(out).param_groups) == 2
    with pytest.raises(ValueError, match="no parameter groups"):
        polycom_optimizer(dataclasses.replace(base, param_groups=[]))


@pytest.mark.parametrize(
    ("fqn", "coefficient"),
    [
        ("layers.0.feed_forward.act.weight", True),
        ("layers.0.moe.routed_experts.inner_experts.act.bias", True),
        ("layers.0._checkpoint_wrapped_module.feed_forward.act.prelu_weight", True),
        ("act.weight", True),
        ("layers.0.feed_forward.w1.weight", False),
        ("layers.0.attention.react.weight", False),
        ("layers.0.feed_forward.act.weight_extra", False),
    ],
)
def test_coefficient_pattern(fqn, coefficient):
    assert bool(re.search(COEFFICIENT_PATTERN, fqn)) == coefficient
