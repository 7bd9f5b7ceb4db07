"""The torchtitan FFN and experts against polycom's own MLP / MoE experts with the same weights (fp64).

Outputs and every gradient (input, each matrix, each coefficient) must agree; init, widths and bad
input are checked here too. Multi-process parallel checks are in test_torchtitan_parallel.py.
"""

from __future__ import annotations

import pytest
import torch
from torchtitan_cases import (
    ARMS,
    EXPERT_H,
    NUM_EXPERTS,
    SWIGLU_H,
    build_real,
    reference_experts,
    reference_mlp,
    routed_tokens,
    stock_experts_config,
    stock_ffn_config,
)

from polycom.errors import UserError
from polycom.integrations.torchtitan import (
    PolyComActivation,
    PolyComFeedForward,
    PolyComGroupedExperts,
    polycom_feed_forward_config,
    polycom_grouped_experts_config,
)

TIGHT = dict(rtol=1e-10, atol=1e-12)


def _grads(module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize("arm", ARMS)
@pytest.mark.parametrize("shape", [(2, 5), (7,)], ids=["batch-seq", "rows"])
def test_ffn_matches_polycom_mlp(arm, shape):
    ffn = build_real(polycom_feed_forward_config(stock_ffn_config(), activation=arm))
    ref = reference_mlp(ffn)
    x = torch.randn(*shape, ffn.w1.in_features, dtype=torch.float64)
    g = torch.randn(*shape, ffn.w1.in_features, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ffn(xa), ref(xb)
    torch.testing.assert_close(ya, yb, **TIGHT)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TIGHT)
    got, want = _grads(ffn), _grads(ref)
    names = {"w1.weight": "gate_proj.weight" if ffn.mode == "replace" else "up_proj.weight",
             "w3.weight": "up_proj.weight", "w2.weight": "down_proj.weight"}  # fmt: skip
    for name, grad in got.items():
        torch.testing.assert_close(grad, want[names.get(name, name)], **TIGHT, msg=f"gradient of {name}")
    assert set(got) == {n for n in got}  # every parameter compared above
    assert any(n.startswith("act.") for n in got)


def test_ffn_non_contiguous_input_and_bf16():
    ffn = build_real(polycom_feed_forward_config(stock_ffn_config(), activation="polynorm"))
    ref = reference_mlp(ffn)
    x = torch.randn(16, 5, dtype=torch.float64).t()  # (5, 16), non-contiguous
    torch.testing.assert_close(ffn(x), ref(x.contiguous()), **TIGHT)
    ffn_bf16 = ffn.to(torch.bfloat16)
    y = ffn_bf16(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), ref(x), rtol=0.05, atol=0.05)


def _reference_coefficient_grad(act, coeff: str, shared: bool) -> torch.Tensor:
    """The reference's gradient of coefficient `coeff`, stacked over experts when they are per expert."""
    if shared:
        return getattr(act, coeff).grad
    # an expert without tokens has no gradient in the reference: zero in ours
    return torch.stack([torch.zeros_like(p) if p.grad is None else p.grad for p in (getattr(a, coeff) for a in act)])


@pytest.mark.parametrize("arm", ARMS)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-expert"])
def test_experts_match_polycom_experts(arm, shared):
    experts = build_real(
        polycom_grouped_experts_config(stock_experts_config(), activation=arm, shared_coefficients=shared)
    )
    ref, act = reference_experts(experts)
    counts = [3, 0, 4, 2]  # an expert with no tokens
    x, counts_t = routed_tokens(counts)
    g = torch.randn(x.shape, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = experts(xa, counts_t), ref(xb, counts, act)
    torch.testing.assert_close(ya, yb, **TIGHT)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TIGHT)
    names = {
        "w1_EFD": "gate_proj" if experts.mode == "replace" else "up_proj",
        "w3_EFD": "up_proj",
        "w2_EDF": "down_proj",
    }
    for name, p in experts.named_parameters():
        if name.startswith("act."):
            want = _reference_coefficient_grad(act, name.removeprefix("act."), shared)
        else:
            want = getattr(ref, names[name]).grad
        torch.testing.assert_close(p.grad, want, **TIGHT, msg=f"gradient of {name}")


def test_experts_padding_rows_are_zero_and_carry_no_gradient():
    experts = build_real(polycom_grouped_experts_config(stock_experts_config(), activation="polynorm"))
    x, counts = routed_tokens([2, 3, 1, 1], padding=3)
    x.requires_grad_()
    y = experts(x, counts)
    assert torch.equal(y[-3:], torch.zeros_like(y[-3:]))
    y.sum().backward()
    assert torch.equal(x.grad[-3:], torch.zeros_like(x.grad[-3:]))
    assert torch.isfinite(experts.act.weight.grad).all()


class _NanPastEnd(torch.autograd.Function):
    """Identity on rows < end; rows >= end become NaN, in the forward value and in the gradient."""

    @staticmethod
    def forward(ctx, t, end):
        ctx.end = end
        return torch.cat([t[:end], torch.full_like(t[end:], float("nan"))])

    @staticmethod
    def backward(ctx, grad):
        return torch.cat([grad[: ctx.end], torch.full_like(grad[ctx.end :], float("nan"))]), None


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("arm", ARMS)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-expert"])
def test_experts_grouped_gemm_path_in_bf16(arm, shared):
    """bf16 input takes torchtitan's grouped GEMM (`torch._grouped_mm`), as on CUDA: same numbers as polycom's
    experts in fp64 to bf16 accuracy. The grouped GEMM leaves the rows past the last expert unwritten (its
    output and its input gradient); the test makes them NaN, and they must come out zero, with zero gradient,
    and leave every other gradient finite."""
    cfg = polycom_grouped_experts_config(stock_experts_config(h=16), activation=arm, shared_coefficients=shared)
    experts = build_real(cfg)  # ungated width 24, replace 16: the CPU grouped GEMM needs 16-byte row strides
    ref, act = reference_experts(experts)
    experts = experts.to(torch.bfloat16)
    ref, act = ref.to(torch.bfloat16).double(), act.to(torch.bfloat16).double()  # the same rounded weights
    counts, padding = [5, 0, 9, 3], 7
    x, counts_t = routed_tokens(counts, padding=padding)
    x = x.to(torch.bfloat16)
    g = torch.randn(x.shape, dtype=torch.float64)
    calls = []
    grouped_mm = experts._grouped_mm

    def unwritten_rows_are_nan(A, B_t, offs):  # what the GEMM leaves past the last expert, made deterministic
        calls.append(1)
        end = int(offs[-1])
        return _NanPastEnd.apply(grouped_mm(A=_NanPastEnd.apply(A, end), B_t=B_t, offs=offs), end)

    experts._grouped_mm = unwritten_rows_are_nan
    xa, xb = x.clone().requires_grad_(), x.double()[: sum(counts)].requires_grad_()
    ya, yb = experts(xa, counts_t), ref(xb, counts, act)
    assert len(calls) == (3 if cfg.mode == "replace" else 2)  # the grouped path, not the per-expert loop
    assert ya.dtype == torch.bfloat16
    assert torch.equal(ya[-padding:], torch.zeros_like(ya[-padding:]))
    assert _relative_error(ya[:-padding], yb) < 2e-2
    (ya.double() * g).sum().backward()
    (yb * g[: sum(counts)]).sum().backward()
    assert torch.equal(xa.grad[-padding:], torch.zeros_like(xa.grad[-padding:]))
    assert _relative_error(xa.grad[:-padding], xb.grad) < 3e-2
    names = {
        "w1_EFD": "gate_proj" if experts.mode == "replace" else "up_proj",
        "w3_EFD": "up_proj",
        "w2_EDF": "down_proj",
    }
    for name, p in experts.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        if name.startswith("act."):
            want = _reference_coefficient_grad(act, name.removeprefix("act."), shared)
        else:
            want = getattr(ref, names[name]).grad
        assert _relative_error(p.grad, want) < 3e-2, name


def test_cuda_graph_capture_needs_shared_coefficients(monkeypatch):
    """While a CUDA graph is captured (torchtitan's default step) the grouped path with shared coefficients runs
    without reading token counts on the host; per-expert coefficients need them and refuse, naming the way out."""
    import polycom.integrations.torchtitan.experts as experts_module

    monkeypatch.setattr(experts_module, "cuda_graph_capturing", lambda t: True)
    x, counts = routed_tokens([3, 1, 2, 2], padding=2)
    x = x.to(torch.bfloat16)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: pytest.fail("token counts read on the host"))
    for shared in (True, False):
        cfg = polycom_grouped_experts_config(
            stock_experts_config(h=16), activation="polynorm", shared_coefficients=shared
        )
        experts = build_real(cfg).to(torch.bfloat16)
        if shared:
            assert torch.isfinite(experts(x, counts)).all()
        else:
            with pytest.raises(RuntimeError, match="disable_cuda_graphs.*shared_coefficients=true"):
                experts(x, counts)


def test_widths_and_parameter_counts_match_swiglu():
    stock = stock_ffn_config()
    swiglu = sum(p.numel() for p in build_real(stock).parameters())
    for arm in ARMS:
        cfg = polycom_feed_forward_config(stock, activation=arm)
        module = build_real(cfg)
        coefficients = sum(p.numel() for p in module.act.parameters())
        assert sum(p.numel() for p in module.parameters()) - coefficients == swiglu, arm
        assert cfg.w1.out_features == (SWIGLU_H if cfg.mode == "replace" else SWIGLU_H * 3 // 2)
        assert hasattr(module, "w3") == (cfg.mode == "replace")
    experts_cfg = polycom_grouped_experts_config(stock_experts_config(), activation="polyrelu")
    assert experts_cfg.hidden_dim == EXPERT_H * 3 // 2 and experts_cfg.mode == "ungated"


@pytest.mark.parametrize("arm, order", [("polynorm", 3), ("polyrelu:order=4", 4), ("polynorm_glu:order=2", 2)])
def test_init_after_meta_build_is_one_over_r_and_zero(arm, order):
    cfg = polycom_feed_forward_config(stock_ffn_config(), activation=arm)
    with torch.device("meta"):
        ffn = cfg.build()
    assert ffn.act.weight.is_meta
    ffn.to_empty(device="cpu")
    with torch.no_grad():
        ffn.init_states()
    assert torch.equal(ffn.act.weight, torch.full((order,), 1.0 / order))
    assert torch.equal(ffn.act.bias, torch.zeros(1))
    per_expert = polycom_grouped_experts_config(stock_experts_config(), activation=arm, shared_coefficients=False)
    with torch.device("meta"):
        experts = per_expert.build()
    experts.to_empty(device="cpu")
    with torch.no_grad():
        experts.init_states()
    assert torch.equal(experts.act.weight, torch.full((NUM_EXPERTS, order), 1.0 / order))
    assert torch.equal(experts.act.bias, torch.zeros(NUM_EXPERTS, 1))


def test_prelu_slope_is_initialised_too():
    cfg = polycom_feed_forward_config(stock_ffn_config(), activation="polyprelu")
    with torch.device("meta"):
        ffn = cfg.build()
    ffn.to_empty(device="cpu")
    with torch.no_grad():
        ffn.init_states()
    assert torch.equal(ffn.act.prelu_weight, torch.full((1,), 0.25))


def test_modules_satisfy_torchtitan_module_protocol():
    from torchtitan.protocols.module import Module

    for module in (
        build_real(polycom_feed_forward_config(stock_ffn_config())),
        build_real(polycom_grouped_experts_config(stock_experts_config(), shared_coefficients=False)),
    ):
        assert all(isinstance(m, Module) for m in module.modules())
        assert isinstance(module.act, PolyComActivation)
    assert issubclass(PolyComFeedForward, torch.nn.Module) and issubclass(PolyComGroupedExperts, torch.nn.Module)


def test_compiled_ffn_matches_eager():
    ffn = build_real(polycom_feed_forward_config(stock_ffn_config(), activation="polyrelu"), dtype=torch.float32)
    x = torch.randn(3, 4, ffn.w1.in_features)
    compiled = torch.compile(ffn, backend="aot_eager", fullgraph=False)
    torch.testing.assert_close(compiled(x), ffn(x))


# -- bad input -----------------------------------------------------------------------------------------
def test_unknown_activation_is_named():
    with pytest.raises(UserError, match="unknown activation 'polynrm'.*did you mean: polynorm"):
        polycom_feed_forward_config(stock_ffn_config(), activation="polynrm")


def test_bad_mode_and_gated_activation_in_ungated_mode():
    with pytest.raises(ValueError, match="mode must be one of ungated, replace"):
        polycom_feed_forward_config(stock_ffn_config(), activation="polynorm", mode="gated")
    with pytest.raises(ValueError, match="'polynorm_glu' is gated"):
        polycom_feed_forward_config(stock_ffn_config(), activation="polynorm_glu", mode="ungated")
    with pytest.raises(UserError, match="order must be an integer >= 1"):
        polycom_grouped_experts_config(stock_experts_config(), activation="polynorm:order=0")
    with pytest.raises(ValueError, match="shared_coefficients must be true or false"):
        polycom_grouped_experts_config(stock_experts_config(), shared_coefficients="yes")


def test_replace_mode_uses_the_gated_form_of_a_plain_activation():
    cfg = polycom_feed_forward_config(stock_ffn_config(), activation="polynorm:order=2", mode="replace")
    assert cfg.activation == "polynorm_glu:order=2" and cfg.w1.out_features == SWIGLU_H


def test_other_feed_forward_subclasses_are_refused():
    from torchtitan.models.common.feed_forward import SigmoidGatedFeedForward
    from torchtitan.models.common.linear import Linear

    stock = stock_ffn_config()
    sigmoid = SigmoidGatedFeedForward.Config(
        w1=stock.w1, w2=stock.w2, w3=stock.w3, gate=Linear.Config(in_features=16, out_features=1)
    )
    with pytest.raises(ValueError, match="SigmoidGatedFeedForward"):
        polycom_feed_forward_config(sigmoid)


def test_wrong_call_shapes_are_named():
    ffn = build_real(polycom_feed_forward_config(stock_ffn_config(), activation="polynorm"))
    with pytest.raises(TypeError, match="takes one tensor"):
        ffn.act(torch.randn(2, 72, dtype=torch.float64), torch.randn(2, 72, dtype=torch.float64))
    per_expert = build_real(polycom_grouped_experts_config(stock_experts_config(), shared_coefficients=False))
    with pytest.raises(RuntimeError, match="forward_segments"):
        per_expert.act(torch.randn(2, 18, dtype=torch.float64))


# -- the override mechanism, as torchtitan's trainer applies it ----------------------------------------
def _swiglu_trainer():
    from polycom.integrations.torchtitan.recipes import registry_trainer_config

    trainer = registry_trainer_config("polycom_debug_swiglu")  # 2 layers of stock SwiGLU FeedForward
    trainer.model_spec.model.update_from_config(config=trainer)
    return trainer


def _ffn_types(trainer) -> list[str]:
    return [type(layer.feed_forward).__qualname__ for layer in trainer.model_spec.model.layers]


def test_override_with_kwargs_from_the_command_line_form():
    from torchtitan.config.override import OverrideConfig, apply_overrides, parse_cli_imports

    trainer = _swiglu_trainer()
    target = "polycom.integrations.torchtitan.feed_forward.polycom_feed_forward"
    imports = parse_cli_imports([f'{target}={{"activation": "polyrelu:order=2", "mode": "replace"}}'])
    lines = apply_overrides(OverrideConfig(imports=imports), trainer)
    assert len(lines) == 2 and _ffn_types(trainer) == ["PolyComFeedForward.Config"] * 2
    ffn = trainer.model_spec.model.layers[0].feed_forward
    assert (ffn.activation, ffn.mode) == ("polyrelu_glu:order=2", "replace")
    assert ffn.sharding_config is not None  # torchtitan's FFN sharding (set before overrides) is carried over
    assert ffn.w1.sharding_config is not None and ffn.w2.sharding_config is not None


PARTIAL_OVERRIDE = None  # registered by the test below, in this module (the override's import path)


def test_feed_forward_override_limited_to_fqn_globs():
    from torchtitan.config.override import OverrideConfig, apply_overrides

    from polycom.integrations.torchtitan import feed_forward_override

    global PARTIAL_OVERRIDE
    if PARTIAL_OVERRIDE is None:
        PARTIAL_OVERRIDE = feed_forward_override("late_polynorm", fqns=["*layers.1.feed_forward"])
    assert PARTIAL_OVERRIDE.__module__ == __name__ and PARTIAL_OVERRIDE.__name__ == "late_polynorm"
    trainer = _swiglu_trainer()
    apply_overrides(OverrideConfig(imports=[f"{__name__}.late_polynorm"]), trainer)
    assert _ffn_types(trainer) == ["FeedForward.Config", "PolyComFeedForward.Config"]
    swiglu = trainer.model_spec.model.layers[0].feed_forward.w1.out_features
    assert swiglu == 384 and trainer.model_spec.model.layers[1].feed_forward.w1.out_features == 576  # 1.5 x
