"""The torchtitan FFN and experts under tensor and expert parallelism (2 gloo processes, fp64).

Each case runs torchtitan's own sharding path (ParallelDims mesh, the module's ShardingConfig,
Module.parallelize) and compares the gathered outputs and every gradient with the whole module on the
same data: TP=2 vs TP=1 for the dense FFN (spmd_types and partial_dtensor backends, with and without
sequence parallelism) and for tensor-parallel experts; EP=2 vs EP=1 for the experts module on each rank's
own experts and tokens, and for torchtitan's whole MoE layer (router, all-to-all token dispatch, PolyCom
experts, combine; gloo's all_to_all needs equal splits, so the router's balanced debug routing is used).
The cases of one backend share one pair of processes. The partial_dtensor backend (the one FSDP needs with
torch 2.13, docs/torchtitan.md) runs the FFN's TP cases and the EP cases of the experts and the MoE layer.
"""

from __future__ import annotations

import pytest
import torch
from dist_harness import run_workers, values
from torchtitan_cases import ARMS
from torchtitan_workers import run_cases

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TIGHT = dict(rtol=1e-10, atol=1e-12)

SPMD_CASES = (
    [("ffn_tp_worker", (arm, False)) for arm in ARMS]
    + [("ffn_tp_worker", ("polynorm", True)), ("ffn_tp_worker", ("polyrelu", True))]
    + [("ffn_tp_worker", ("polynorm", True, "inductor"))]  # torch.compile over the TP PolyNorm's collectives
    + [
        ("experts_tp_worker", (arm, shared))
        for arm in ("polynorm", "polyrelu", "polynorm_glu")
        for shared in (True, False)
    ]
    + [("experts_ep_worker", (arm, shared)) for arm in ("polynorm", "polyrelu") for shared in (True, False)]
    + [("moe_ep_worker", ("polynorm", True)), ("moe_ep_worker", ("polyrelu", False))]
)
DTENSOR_CASES = [
    ("ffn_tp_worker", ("polynorm", False)),
    ("ffn_tp_worker", ("polynorm_glu", False)),
    ("experts_ep_worker", ("polynorm", True)),
    ("moe_ep_worker", ("polynorm", True)),
    ("moe_ep_worker", ("polyrelu", False)),
]


def _ids(cases):
    return [f"{name.split('_')[0]}-{name.split('_')[1]}-" + "-".join(str(a) for a in args) for name, args in cases]


@pytest.fixture(scope="module")
def spmd_results():
    return values(run_workers(run_cases, 2, SPMD_CASES, timeout_s=300, env={"TT_BACKEND": "spmd_types"}))


@pytest.fixture(scope="module")
def dtensor_results():
    return values(run_workers(run_cases, 2, DTENSOR_CASES, timeout_s=300, env={"TT_BACKEND": "partial_dtensor"}))


def _check(result: dict) -> None:
    torch.testing.assert_close(*result["y"], **TIGHT, msg="output")
    torch.testing.assert_close(*result["dx"], **TIGHT, msg="input gradient")
    for name, (got, want) in result["grads"].items():
        torch.testing.assert_close(got, want, **TIGHT, msg=f"gradient of {name}")
    if result.get("compiled_graphs"):  # compiled as one graph: the collectives traced, no fallback to eager
        assert result["graph_breaks"] == 0
    if "local_width" in result:  # the hidden dimension really was split
        assert result["local_width"] * 2 == result["grads"]["w1.weight"][1].shape[0]
    if "local_experts" in result:  # each rank really held half the experts
        (w1,) = [want for name, (_, want) in result["grads"].items() if name.endswith("w1_EFD")]
        assert result["local_experts"] * 2 == w1.shape[0]


@pytest.mark.parametrize("index", range(len(SPMD_CASES)), ids=_ids(SPMD_CASES))
def test_spmd_types_backend_equals_unsharded(spmd_results, index):
    """torchtitan's default backend: TP=2 FFN (SP off/on, and compiled with Inductor), TP=2 experts, EP=2 experts
    and MoE layer."""
    compiled = len(SPMD_CASES[index][1]) > 2
    for rank_results in spmd_results:
        _check(rank_results[index])
        assert (rank_results[index].get("compiled_graphs", 0) > 0) == compiled


@pytest.mark.parametrize("index", range(len(DTENSOR_CASES)), ids=_ids(DTENSOR_CASES))
def test_partial_dtensor_backend_equals_unsharded(dtensor_results, index):
    """The DTensor backend: the FFN's hidden activations are DTensors and polycom's DTensor ops run; the experts
    and the whole MoE layer with EP=2 (the backend FSDP needs with torch 2.13, docs/torchtitan.md)."""
    for rank_results in dtensor_results:
        _check(rank_results[index])
