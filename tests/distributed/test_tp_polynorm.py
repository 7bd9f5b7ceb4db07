"""Tensor-parallel PolyNorm on DTensors (2 gloo processes) against the fp64 formula on the full tensor."""

from __future__ import annotations

import pytest
import torch
from dist_harness import run_workers, values
from dist_workers import make_polynorm_case, polynorm_formula, tp_polynorm_and_public_api_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

EPS = 1e-6

CASES = [
    # width 8 split 4 + 4; order 3 plain and gated; plain and replicated-DTensor coefficients
    dict(
        seed=1, shape=(2, 5, 8), order=3, dtype=torch.float64, gated=False, placement="shard_last", dtensor_coeffs=False
    ),
    dict(
        seed=2, shape=(2, 5, 8), order=3, dtype=torch.float64, gated=False, placement="shard_last", dtensor_coeffs=True
    ),
    dict(seed=3, shape=(6, 8), order=3, dtype=torch.float64, gated=True, placement="shard_last", dtensor_coeffs=True),
    dict(seed=4, shape=(6, 8), order=3, dtype=torch.float64, gated=True, placement="shard_last", dtensor_coeffs=False),
    # odd width (7 = 4 + 3, uneven shards), order 2, a single row
    dict(seed=5, shape=(1, 7), order=2, dtype=torch.float64, gated=False, placement="shard_last", dtensor_coeffs=False),
    # fp32 and bf16 storage (fp32 math inside)
    dict(
        seed=6, shape=(4, 3, 16), order=3, dtype=torch.float32, gated=False, placement="shard_last", dtensor_coeffs=True
    ),
    dict(seed=7, shape=(4, 16), order=3, dtype=torch.bfloat16, gated=True, placement="shard_last", dtensor_coeffs=True),
    # other layouts take the gather-and-apply fallback
    dict(seed=8, shape=(4, 8), order=3, dtype=torch.float64, gated=False, placement="replicate", dtensor_coeffs=False),
    dict(seed=9, shape=(4, 8), order=3, dtype=torch.float64, gated=True, placement="shard_rows", dtensor_coeffs=True),
    # rows with large / tiny entries in fp32 (x**6 of 1e7 overflows fp32): the row scale crosses ranks
    dict(seed=12, shape=(4, 16), order=3, dtype=torch.float32, gated=False, placement="shard_last", scale=1e7),
    dict(seed=13, shape=(4, 15), order=3, dtype=torch.float32, gated=True, placement="shard_last", scale=1e7),
    dict(seed=14, shape=(3, 16), order=3, dtype=torch.float32, gated=True, placement="shard_last", scale=1e-7),
]
for _c in CASES:
    _c["eps"] = EPS
    _c.setdefault("dtensor_coeffs", False)


def _reference(spec: dict) -> dict:
    """Full-tensor fp64 outputs and gradients from the formula, by autograd."""
    c = make_polynorm_case(
        spec["seed"], spec["shape"], spec["order"], spec["dtype"], spec["gated"], spec.get("scale", 1.3)
    )
    x = c["x"].double().requires_grad_()
    w = c["weight"].double().requires_grad_()
    b = c["bias"].double().requires_grad_()
    y = polynorm_formula(x, w, b, EPS)
    up = None
    if spec["gated"]:
        up = c["up"].double().requires_grad_()
        y = y * up
    y.backward(c["grad"].double())
    ref = {"y": y.detach(), "dx": x.grad, "dw": w.grad, "db": b.grad}
    if up is not None:
        ref["dup"] = up.grad
    return ref


def _tol(dtype: torch.dtype) -> dict:
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-10),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    }[dtype]


@pytest.fixture(scope="module")
def both_results():
    return values(run_workers(tp_polynorm_and_public_api_worker, 2, CASES, 11, timeout_s=120))


@pytest.fixture(scope="module")
def tp_results(both_results):
    return [r[0] for r in both_results]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_tp_polynorm_matches_unsharded(tp_results, index):
    spec = CASES[index]
    ref = _reference(spec)
    tol = _tol(spec["dtype"])
    for rank_results in tp_results:
        got = rank_results[index]
        assert got["type"] == "DTensor"
        for key in ref:
            # coefficient gradients are stored in the coefficients' dtype (fp32)
            key_tol = _tol(torch.float32) if key in ("dw", "db") and spec["dtype"] == torch.float64 else tol
            if "scale" in spec:  # relative to the size of the quantity (dx scales with 1 / scale)
                key_tol = dict(rtol=1e-4, atol=1e-5 * ref[key].abs().max().item())
            torch.testing.assert_close(got[key].double(), ref[key], **key_tol, msg=lambda m, k=key: f"{k}: {m}")
    # every rank holds the same (replicated) coefficient gradients: nothing was double counted
    torch.testing.assert_close(tp_results[0][index]["dw_local"], tp_results[1][index]["dw_local"], rtol=0, atol=0)


def test_tp_polynorm_keeps_placement_and_uses_one_collective_each_way(tp_results):
    """Forward: one all-gather of [partial sums, slice scale]; backward: one all-reduce of the dots."""
    for index, spec in enumerate(CASES):
        got = tp_results[0][index]
        if spec["placement"] == "shard_last":
            assert got["placements"] == [("Shard", len(spec["shape"]) - 1)]
            assert got["forward_collectives"] == 1
            assert got["backward_collectives"] == 1
        elif spec["placement"] == "replicate":
            assert got["placements"] == [("Replicate", None)]
        else:
            assert got["placements"] == [("Shard", 0)]


def test_per_shard_official_variant_differs_from_unsharded(tp_results):
    """Normalising each shard over its own columns (official code under TP) changes the output."""
    for index, spec in enumerate(CASES):
        if spec["placement"] != "shard_last" or spec["dtype"] != torch.float64:
            continue
        ref = _reference(spec)["y"]
        per_shard = tp_results[0][index]["per_shard"].double()
        assert (per_shard - ref).abs().max().item() > 1e-2, f"case {index}: per-shard output equals the full op"


# ----------------------------------------------------------------------------------------------------
# the public API (polycom.poly_norm / PolyNorm / PolyNormGated) given DTensors
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def public_results(both_results):
    return [r[1] for r in both_results]


def _public_reference(gated: bool) -> dict:
    spec = dict(seed=11, shape=(3, 4, 8), order=3, dtype=torch.float64, gated=gated)
    return _reference(spec)


def _check_public(result: dict, gated: bool) -> None:
    assert "error" not in result, result.get("error")
    assert result["type"] == "DTensor"
    ref = _public_reference(gated)
    for key in ref:
        tol = _tol(torch.float32) if key in ("dw", "db") else _tol(torch.float64)
        torch.testing.assert_close(result[key].double(), ref[key], **tol, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("variant", ["dtensor_module", "dtensor_gated_module"])
def test_polynorm_modules_with_replicated_coefficients_on_sharded_input(public_results, variant):
    """The layout tensor parallelism gives the MLP activation (see polycom.distributed.parallelize)."""
    for rank_results in public_results:
        _check_public(rank_results[variant], gated="gated" in variant)


@pytest.mark.parametrize("variant", ["plain_module", "plain_gated_module", "functional", "dtensor_module"])
def test_public_op_uses_tensor_parallel_polynorm(public_results, variant):
    """polycom.ops dispatches DTensors to the TP path: plain coefficients work too, and forward and
    backward cost exactly one collective each."""
    for rank_results in public_results:
        result = rank_results[variant]
        _check_public(result, gated="gated" in variant)
        assert result["collectives"] == 2
