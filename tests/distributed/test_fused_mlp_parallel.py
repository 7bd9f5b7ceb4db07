"""The fused MLP path (`polycom.MLP(fused=True)`: the block as one `FusedMLPFunction` autograd node) on 2 gloo
processes under FSDP2 and under tensor parallelism, against ONE process with fused_mlp=True and with
fused_mlp=False.

Every run trains the tiny polycom LM of `dist_workers` (2 blocks, d_model 32, fp32) for 3 SGD steps and
compares the loss of every step, every parameter's full gradient on the first batch and every parameter
after the last step (SGD, not AdamW: see `dist_workers.make_optimizer`; AdamW's loss curves under FSDP2
and TP are compared in test_parallel_training.py). Which path each MLP call took is read from the grad_fn
of its output (`dist_workers.record_mlp_paths`), so no equivalence below can pass on the wrong path:

- FSDP2 gathers a block's parameters before its forward, so the MLP sees plain tensors and the fused node
  runs. With activation checkpointing the block's recompute in backward stops as soon as the fused node has
  saved its tensors again (before the MLP returns, so the hook does not see it); a recompute on the unfused
  path would save other tensors, which checkpoint rejects (CheckpointError), so matching runs prove it too.
- Tensor parallelism turns the projection weights into DTensors (and hooks the projections for their
  layouts), so `MLP._fused_kind` falls back to the unfused modules, where the activation receives a
  Shard(-1) DTensor and PolyNorm sums its row statistics over the TP group
  (`polycom.ops.tensor_parallel`). fused_mlp=True therefore changes nothing under TP: the fused node never
  runs there, and the results equal the one-process fused (and unfused) model.
"""

from __future__ import annotations

import pytest
import torch
from dist_harness import run_workers, values
from dist_workers import FUSED_MLP_NODE, reference_run, tasks_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 3
N_LAYERS = 2  # dist_workers.TINY
# fp32 sums in another order (TP all-reduces, FSDP2 reduce-scatter vs one process's micro-batch sums):
# measured at most 1.3e-7 relative on the losses and 1.2e-7 absolute on gradients and trained parameters,
# whose entries are ~1e-3 .. 1 (a gradient scaled by 1.001 is off by ~1e-5)
LOSS_TOL = GRAD_TOL = PARAM_TOL = dict(rtol=1e-5, atol=1e-6)

ACTIVATIONS = ["polynorm", "polyrelu", "polynorm_glu", "swiglu"]
RUNS = {
    **{f"fsdp_{a}": dict(model=dict(activation=a), parallel=dict(fsdp=True)) for a in ACTIVATIONS},
    "fsdp_ac_polyrelu_glu": dict(
        model=dict(activation="polyrelu_glu"), parallel=dict(fsdp=True, activation_checkpointing=True)
    ),
    **{f"tp_{a}": dict(model=dict(activation=a), parallel=dict(tp=2)) for a in ACTIVATIONS},
}
for _run in RUNS.values():
    _run.update(kind="train_state", steps=STEPS, optimizer="sgd")
    _run["model"]["fused_mlp"] = True


def _dp_size(name: str) -> int:
    return 2 // RUNS[name]["parallel"].get("tp", 1)


@pytest.fixture(scope="module")
def results() -> list[dict]:
    per_rank = values(run_workers(tasks_worker, 2, list(RUNS.values()), timeout_s=150))
    return [dict(zip(RUNS, r)) for r in per_rank]


_REFERENCES: dict = {}


def reference(activation: str, fused: bool, dp_size: int, steps: int = STEPS) -> dict:
    """`reference_run` (SGD) of the tiny model with this activation and fused_mlp, memoised per module.

    On one thread like the workers: the tiny matmuls on two threads of a busy 2-core machine took seconds."""
    key = (activation, fused, dp_size, steps)
    if key not in _REFERENCES:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model = dict(activation=activation, fused_mlp=fused)
            _REFERENCES[key] = reference_run(model, steps, dp_size, optimizer="sgd")
        finally:
            torch.set_num_threads(threads)
    return _REFERENCES[key]


def _assert_same_run(got: dict, want: dict, what: str) -> None:
    torch.testing.assert_close(
        torch.tensor(got["losses"], dtype=torch.float64),
        torch.tensor(want["losses"], dtype=torch.float64),
        **LOSS_TOL,
        msg=lambda m: f"{what}, losses: {m}",
    )
    grads = dict(got["grads"])
    assert grads.pop("__misplaced__", []) == [], "gradients whose placement the optimizer would misapply"
    for field, tol, got_values in (("grads", GRAD_TOL, grads), ("params", PARAM_TOL, got["params"])):
        assert set(got_values) == set(want[field]), field
        for key, value in want[field].items():
            torch.testing.assert_close(
                got_values[key], value, **tol, msg=lambda m, f=field, k=key: f"{what}, {f} {k}: {m}"
            )


@pytest.mark.parametrize("activation", ACTIVATIONS + ["polyrelu_glu"])
def test_one_process_fused_and_unfused_mlp_train_alike(activation):
    """The baseline of the parallel runs: fused_mlp=True and False give the same run in one process, and
    each really took its path (2 blocks x 3 steps x 2 micro-batches MLP calls)."""
    fused, unfused = reference(activation, True, 2), reference(activation, False, 2)
    assert fused["mlp_paths"] == [(FUSED_MLP_NODE, False)] * (N_LAYERS * STEPS * 2)
    assert len(unfused["mlp_paths"]) == N_LAYERS * STEPS * 2
    assert all(node != FUSED_MLP_NODE for node, _ in unfused["mlp_paths"]), unfused["mlp_paths"]
    _assert_same_run(fused, unfused, f"{activation} fused vs unfused")
    # training moved every weight matrix: equal parameters are not equal initial values
    init = reference(activation, True, 2, steps=0)["params"]
    for key, value in fused["params"].items():
        if value.ndim == 2:
            assert not torch.equal(value, init[key]), f"{key} did not change"


@pytest.mark.parametrize("name", [n for n in RUNS if n.startswith("fsdp_")])
def test_fsdp_runs_the_fused_mlp_and_matches_one_process(results, name):
    """FSDP2 with fused_mlp=True: every MLP forward went through the fused node on plain gathered weights, and
    losses, first-batch gradients and trained parameters equal one process's with fused_mlp=True and with
    fused_mlp=False."""
    activation = RUNS[name]["model"]["activation"]
    for rank, got in enumerate(results):
        paths = got[name]["mlp_paths"]
        assert paths == [(FUSED_MLP_NODE, False)] * (N_LAYERS * STEPS), f"rank {rank}: {paths}"
        for fused in (True, False):
            _assert_same_run(got[name], reference(activation, fused, _dp_size(name)), f"rank {rank} fused={fused}")


@pytest.mark.parametrize("name", [n for n in RUNS if n.startswith("tp_")])
def test_tp_falls_back_to_the_unfused_mlp_and_matches_one_process(results, name):
    """Tensor parallel with fused_mlp=True: every MLP call took the unfused path on DTensor weights (the
    documented fallback of `MLP._fused_kind`), and the run equals one process's, fused and unfused."""
    activation = RUNS[name]["model"]["activation"]
    for rank, got in enumerate(results):
        paths = got[name]["mlp_paths"]
        assert len(paths) == N_LAYERS * STEPS, paths
        assert all(node != FUSED_MLP_NODE and dtensor for node, dtensor in paths), f"rank {rank}: {paths}"
        for fused in (True, False):
            _assert_same_run(got[name], reference(activation, fused, _dp_size(name)), f"rank {rank} fused={fused}")
