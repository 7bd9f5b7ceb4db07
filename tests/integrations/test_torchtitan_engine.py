"""Registry models through torchtitan's engine: pipeline parallelism, FSDP2, activation checkpointing, compile.

Two gloo processes build a registry config's whole decoder (PolyCom in every layer; fp32, SDPA attention
because FlexAttention has no CPU backward) and run one forward + backward through torchtitan's own code:
`pipeline_llm` with its layer split and a schedule (1F1B, GPipe, interleaved, zero-bubble), or the model's
`parallelize_fn` with FSDP2 over both ranks, torchtitan's activation checkpointing, its per-block
`torch.compile` and, for the MoE, expert parallelism 2 (all-to-all token dispatch, with the router's balanced
debug routing since gloo's all_to_all takes equal splits only). The loss and every parameter's gradient must equal the plain eager model on the whole
batch (fp32: relative to each gradient's largest entry, <= 1e-4; a wrong coefficient path is off by O(1)).

Setup notes, each the same for torchtitan's own SwiGLU model (checked when these tests were written):
- the zero-bubble schedules split each backward in two (input, then weights), which torch's selective
  activation checkpointing refuses ("backward an extra time"), so those cases run full or no checkpointing;
- on this CPU build FSDP2 refuses the spmd_types backend's plain-tensor parameters, so the FSDP cases run
  the partial_dtensor backend; gloo has no PREMUL_SUM, so FSDP reduces torchtitan's undivided gradient
  sum as a SUM.
"""

from __future__ import annotations

import pytest
from dist_harness import run_workers, values
from torchtitan_model_workers import run_cases

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

FOUR_STAGES = [["tok_embeddings"], ["layers.0"], ["layers.1"], ["norm", "lm_head"]]  # two per rank
PP_CASES = {  # id -> (registry config, schedule, stages (None: torchtitan's split), activation checkpointing)
    "polynorm-1F1B": ("polycom_debug_polynorm", "1F1B", None, "selective"),
    "polyrelu-GPipe-full-ac": ("polycom_debug_polyrelu", "GPipe", None, "full"),
    "polynorm-Interleaved1F1B": ("polycom_debug_polynorm", "Interleaved1F1B", FOUR_STAGES, "selective"),
    "moe-polynorm-1F1B": ("polycom_debug_moe_polynorm", "1F1B", None, "selective"),
    "polynorm-ZBVZeroBubble-full-ac": ("polycom_debug_polynorm", "ZBVZeroBubble", FOUR_STAGES, "full"),
    "moe-polyrelu-InterleavedZeroBubble-no-ac": (
        "polycom_debug_moe_polyrelu",
        "InterleavedZeroBubble",
        FOUR_STAGES,
        "none",
    ),
}
FSDP_CASES = {  # id -> (registry config, activation checkpointing, per-block compile, expert parallelism)
    "polynorm-selective-ac": ("polycom_debug_polynorm", "selective", False, 1),
    "polyrelu-full-ac": ("polycom_debug_polyrelu", "full", False, 1),
    "moe-polynorm-selective-ac": ("polycom_debug_moe_polynorm", "selective", False, 1),
    "moe-polyrelu-no-ac": ("polycom_debug_moe_polyrelu", "none", False, 1),
    "polynorm-selective-ac-compiled": ("polycom_debug_polynorm", "selective", True, 1),
    "moe-polynorm-ep2-selective-ac": ("polycom_debug_moe_polynorm", "selective", False, 2),
    "moe-polyrelu-ep2-no-ac": ("polycom_debug_moe_polyrelu", "none", False, 2),
}


@pytest.fixture(scope="module")
def pp_results():
    return values(
        run_workers(
            run_cases,
            2,
            [("model_pp_worker", case) for case in PP_CASES.values()],
            timeout_s=400,
            env={"TT_BACKEND": "spmd_types"},
        )
    )


@pytest.fixture(scope="module")
def fsdp_results():
    return values(
        run_workers(
            run_cases,
            2,
            [("model_dp_worker", case) for case in FSDP_CASES.values()],
            timeout_s=400,
            env={"TT_BACKEND": "partial_dtensor"},
        )
    )


def _check_loss_and_grads(result: dict) -> None:
    got_loss, want_loss = result["loss"]
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    coefficients = 0
    for name, (got, want) in result["grads"].items():
        assert got is not None, f"{name} has no gradient on the engine side"
        scale = want.abs().max().item()
        assert scale > 0, f"{name}: the reference gradient is zero, the check would be empty"
        err = (got - want).abs().max().item()
        assert err <= 1e-4 * scale, f"gradient of {name}: max |diff| {err:.3g} vs largest entry {scale:.3g}"
        coefficients += ".act." in name
    assert coefficients >= 4  # weight and bias of the activation in both blocks


@pytest.mark.parametrize("index", range(len(PP_CASES)), ids=list(PP_CASES))
def test_pipeline_parallel_equals_the_whole_model(pp_results, index):
    """PP=2: each rank holds its own stages, and the stages together give the whole model's loss and gradients."""
    checkpointing = list(PP_CASES.values())[index][3]
    for rank_results in pp_results:
        result = rank_results[index]
        _check_loss_and_grads(result)
        first, second = (set(names) for names in result["held"])
        assert first and second and not first & second  # the layers really were split between the ranks
        assert first | second == set(result["grads"])
        assert all(("Checkpoint" in block) == (checkpointing != "none") for block in result["blocks"])
    assert sum(rank_results[index]["polycom_layers"] for rank_results in pp_results) == 2  # one FFN per block


@pytest.mark.parametrize("index", range(len(FSDP_CASES)), ids=list(FSDP_CASES))
def test_fsdp_checkpointing_and_compile_equal_the_whole_model(fsdp_results, index):
    """FSDP2 over 2 ranks (half the batch each), with the case's activation checkpointing, compile and expert
    parallelism (EP=2: the experts sharded over the ranks, tokens dispatched by all-to-all)."""
    name, checkpointing, compiled, ep = list(FSDP_CASES.values())[index]
    for rank_results in fsdp_results:
        result = rank_results[index]
        _check_loss_and_grads(result)
        assert all(block.startswith("FSDP") for block in result["blocks"])
        assert all(("Checkpoint" in block) == (checkpointing != "none") for block in result["blocks"])
        assert (result["compiled_graphs"] > 0) == compiled
        assert result["polycom_layers"] == 2  # one FFN / experts module per block
        assert len(result["expert_meshes"]) == (2 if "_moe_" in name else 0)
        assert all(("ep" in axes) == (ep > 1) for axes in result["expert_meshes"])
