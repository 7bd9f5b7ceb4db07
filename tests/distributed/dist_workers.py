"""Worker functions run on every rank by the distributed tests (importable, so spawn can pickle them).

Each worker starts through `polycom.distributed.init_distributed` from the torchrun-like environment
that `dist_harness.run_workers` sets, and returns plain tensors/numbers for the parent to compare.
"""

from __future__ import annotations

import torch


def polynorm_formula(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """PolyNorm written from the paper, in fp64: sum_i w[r-i] x^i / sqrt(mean(x^2i) + eps) + b."""
    x, weight, bias = x.double(), weight.double(), bias.double()
    r = weight.numel()
    y = bias.expand_as(x).clone()
    for i in range(1, r + 1):
        p = x**i
        y = y + weight[r - i] * p / torch.sqrt((p * p).mean(-1, keepdim=True) + eps)
    return y


# ----------------------------------------------------------------------------------------------------
# tensor-parallel PolyNorm
# ----------------------------------------------------------------------------------------------------


def make_polynorm_case(
    seed: int, shape: tuple[int, ...], order: int, dtype: torch.dtype, gated: bool, scale: float = 1.3
) -> dict:
    """Inputs of one case, the same on every process for the same seed; x is N(0, scale**2)."""
    gen = torch.Generator().manual_seed(seed)
    case = {
        "x": (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype),
        "weight": torch.randn(order, generator=gen, dtype=torch.float64).float(),
        "bias": torch.randn(1, generator=gen, dtype=torch.float64).float(),
        "grad": torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype),
    }
    if gated:
        case["up"] = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return case


def _count_collectives(tpn, calls: dict) -> None:
    """Count every collective the tensor-parallel PolyNorm issues (its all-reduce and all-gather helpers)."""
    for name in ("_all_reduce", "_all_gather"):
        original = getattr(tpn, name)

        def counting(t, group, original=original):
            calls["n"] += 1
            return original(t, group)

        setattr(tpn, name, counting)


def tp_polynorm_worker(rank: int, world_size: int, cases: list[dict]) -> list[dict]:
    """Run each case through poly_norm(_gated)_dtensor on a Shard(-1) DTensor; return full results.

    case keys: seed, shape, order, dtype, gated, placement ("shard_last" | "replicate" | "shard_rows"),
    dtensor_coeffs (bool), eps.
    """
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from polycom.distributed import ParallelConfig, init_distributed
    from polycom.ops import tensor_parallel as tpn

    ctx = init_distributed(ParallelConfig(tp=world_size, timeout_s=60))
    mesh = ctx.tp_mesh
    calls = {"n": 0}
    _count_collectives(tpn, calls)
    out = []
    for spec in cases:
        c = make_polynorm_case(
            spec["seed"], spec["shape"], spec["order"], spec["dtype"], spec["gated"], spec.get("scale", 1.3)
        )
        placement = {"shard_last": Shard(len(spec["shape"]) - 1), "replicate": Replicate(), "shard_rows": Shard(0)}[
            spec["placement"]
        ]
        x = distribute_tensor(c["x"], mesh, [placement]).requires_grad_()
        if spec["dtensor_coeffs"]:
            w = distribute_tensor(c["weight"], mesh, [Replicate()]).requires_grad_()
            b = distribute_tensor(c["bias"], mesh, [Replicate()]).requires_grad_()
        else:
            w = c["weight"].clone().requires_grad_()
            b = c["bias"].clone().requires_grad_()
        calls["n"] = 0
        if spec["gated"]:
            up = distribute_tensor(c["up"], mesh, [placement]).requires_grad_()
            y = tpn.poly_norm_gated_dtensor(x, up, w, b, spec["eps"])
            per_shard = tpn.poly_norm_gated_per_shard(x.detach(), up.detach(), w.detach(), b.detach(), spec["eps"])
        else:
            up = None
            y = tpn.poly_norm_dtensor(x, w, b, spec["eps"])
            per_shard = tpn.poly_norm_per_shard(x.detach(), w.detach(), b.detach(), spec["eps"])
        forward_calls = calls["n"]
        y.backward(distribute_tensor(c["grad"], mesh, list(y.placements)))
        res = {
            "y": y.full_tensor().detach(),
            "placements": [(type(p).__name__, getattr(p, "dim", None)) for p in y.placements],
            "type": type(y).__name__,
            "per_shard": per_shard.full_tensor(),
            "dx": x.grad.full_tensor(),
            "dw": w.grad.full_tensor() if hasattr(w.grad, "full_tensor") else w.grad,
            "db": b.grad.full_tensor() if hasattr(b.grad, "full_tensor") else b.grad,
            "dw_local": w.grad.to_local() if hasattr(w.grad, "to_local") else w.grad,
            "forward_collectives": forward_calls,
            "backward_collectives": calls["n"] - forward_calls,
        }
        if up is not None:
            res["dup"] = up.grad.full_tensor()
        out.append(res)
    return out


# ----------------------------------------------------------------------------------------------------
# a tiny training loop (independent of the trainer) for the parallel-equivalence tests
# ----------------------------------------------------------------------------------------------------

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=16, activation="polynorm_glu")


def tiny_config(**overrides):
    from polycom.models import ModelConfig

    return ModelConfig.from_dict({**TINY, **overrides})


def tiny_batches(steps: int, batch: int = 4, seq: int = 12, vocab: int = 64, seed: int = 7) -> list[torch.Tensor]:
    """Global batches (batch, seq + 1), identical on every process: learnable sequences
    t_{k+1} = (5 t_k + 3) mod vocab from random starts, so the loss falls within a few steps."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        tokens = torch.empty(batch, seq + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
        for k in range(seq):
            tokens[:, k + 1] = (5 * tokens[:, k] + 3) % vocab
        batches.append(tokens)
    return batches


def make_optimizer(model: torch.nn.Module, name: str = "adamw") -> torch.optim.Optimizer:
    """AdamW (lr 1e-2, weight decay 0.1), or "sgd": plain SGD (lr 0.5), under which trained parameters are a
    well-conditioned function of the gradients (AdamW's first steps move a weight by about lr whatever the
    size of its gradient, so a 1e-8 gradient that rounds differently on two layouts moves it differently)."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.5)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def run_steps(
    model, opt, batches, dp_rank: int, dp_size: int, dp_group=None, clip: float | None = 1.0, first_grads=None
) -> list[float]:
    """One optimizer step per global batch; this data-parallel rank trains on its slice of the rows.

    Returns the global mean loss of every step (mean over the data-parallel ranks' equal slices).
    first_grads: a dict to fill with the first step's full gradients (`full_grads`, before clipping).
    """
    import torch.distributed as dist

    from polycom.distributed.grad_utils import clip_grad_norm_

    losses = []
    for tokens in batches:
        rows = tokens.chunk(dp_size)[dp_rank]
        out = model(rows[:, :-1], rows[:, 1:])
        out.loss.backward()
        if first_grads is not None and not first_grads:
            first_grads.update(full_grads(model))
        if clip is not None:
            clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.detach().clone()
        if dp_size > 1:
            dist.all_reduce(loss, group=dp_group)
            loss /= dp_size
        losses.append(loss.item())
    return losses


def reference_run(
    model_cfg: dict, steps: int, dp_size: int, clip: float | None = 1.0, seed: int = 1234, optimizer: str = "adamw"
) -> dict:
    """The same run in ONE process: each global batch split in dp_size micro-batches, gradients averaged.

    This is exactly what data parallelism computes (it also holds for MoE, whose auxiliary loss is
    per micro-batch); for dense models it equals the full-batch step up to float rounding.
    Returns {"losses": per step, "grads": name -> first step's gradient (before clipping),
    "params": name -> value after the last step, "mlp_paths": `record_mlp_paths`}.
    """
    from polycom.models import build_model

    torch.manual_seed(seed)
    model = build_model(tiny_config(**model_cfg))
    paths = record_mlp_paths(model)
    opt = make_optimizer(model, optimizer)
    losses, grads = [], {}
    for tokens in tiny_batches(steps):
        total = 0.0
        for rows in tokens.chunk(dp_size):
            out = model(rows[:, :-1], rows[:, 1:])
            (out.loss / dp_size).backward()
            total += out.loss.item() / dp_size
        if not grads:
            grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return {"losses": losses, "grads": grads, "params": full_params(model), "mlp_paths": paths}


def reference_losses(model_cfg: dict, steps: int, dp_size: int, clip: float | None = 1.0, seed: int = 1234):
    """The loss curve of `reference_run`."""
    return reference_run(model_cfg, steps, dp_size, clip, seed)["losses"]


def parallel_train_worker(rank: int, world_size: int, runs: list[dict]) -> list[list[float]]:
    """For each run {"model": overrides, "parallel": ParallelConfig kwargs, "steps": n, "meta": bool}:
    build the tiny model (same seed everywhere), parallelize, train, return the loss curve."""
    from polycom.distributed import ParallelConfig, init_distributed, parallelize
    from polycom.models import build_model

    curves = []
    ctx = None
    for run in runs:
        cfg = ParallelConfig(timeout_s=60, **run["parallel"])
        ctx = ctx or init_distributed(cfg)
        torch.manual_seed(run.get("seed", 1234))
        model = build_model(tiny_config(**run["model"]))
        model = parallelize(model, cfg, ctx)
        opt = make_optimizer(model)
        dp_group = ctx.dp_mesh.get_group() if ctx.dp_size > 1 else None
        curves.append(
            run_steps(model, opt, tiny_batches(run["steps"]), ctx.dp_rank, ctx.dp_size, dp_group, run.get("clip", 1.0))
        )
    return curves


# ----------------------------------------------------------------------------------------------------
# task runner: several runs in one process group (process start-up dominates the test time)
# ----------------------------------------------------------------------------------------------------


def _build(ctx, run: dict):
    from polycom.distributed import ParallelConfig, parallelize
    from polycom.models import build_model

    cfg = ParallelConfig(timeout_s=60, **run.get("parallel", {}))
    torch.manual_seed(run.get("seed", 1234))
    if run.get("meta"):
        with torch.device("meta"):
            model = build_model(tiny_config(**run.get("model", {})))
    else:
        model = build_model(tiny_config(**run.get("model", {})))
    return parallelize(model, cfg, ctx)


def run_task(ctx, task: dict):
    """One task on an initialised context. kinds:
    train:  build + parallelize + train `steps` steps -> loss curve
    train_state: the same -> {"losses", "grads" (first step, full), "params" (full, after), "mlp_paths"}
    grads:  build + parallelize, one backward of the first global batch -> `full_grads`
    save:   train `save_at` steps, save_sharded(path, extra_state={"step": save_at}), train to `steps`
            -> losses of the steps after the save
    resume: build + parallelize, load_sharded(path) -> (extra_state, losses of steps extra["step"]..steps)
    meta_init: build on meta + parallelize -> facts about the initialised weights
    error:  run `inner` (a task) expecting a UserError -> its message
    The optimizer is `make_optimizer(model, task.get("optimizer", "adamw"))`.
    """
    from polycom.errors import UserError
    from polycom.train.checkpoint import load_sharded, save_sharded

    kind = task["kind"]
    dp_group = ctx.dp_mesh.get_group() if ctx.dp_size > 1 else None
    batches = tiny_batches(task.get("steps", 0))
    if kind == "error":
        try:
            run_task(ctx, task["inner"])
        except UserError as exc:
            return f"UserError: {exc}"
        return "no error"
    model = _build(ctx, task)
    opt = make_optimizer(model, task.get("optimizer", "adamw"))
    if kind == "train":
        return run_steps(model, opt, batches, ctx.dp_rank, ctx.dp_size, dp_group)
    if kind == "train_state":  # as reference_run returns it
        paths, grads = record_mlp_paths(model), {}
        losses = run_steps(model, opt, batches, ctx.dp_rank, ctx.dp_size, dp_group, first_grads=grads)
        return {"losses": losses, "grads": grads, "params": full_params(model), "mlp_paths": paths}
    if kind == "grads":  # gradients of the first global batch (dp ranks average their slices)
        rows = tiny_batches(1)[0].chunk(ctx.dp_size)[ctx.dp_rank]
        model(rows[:, :-1], rows[:, 1:]).loss.backward()
        return full_grads(model)
    if kind == "save":
        k = task["save_at"]
        run_steps(model, opt, batches[:k], ctx.dp_rank, ctx.dp_size, dp_group)
        save_sharded(task["path"], model, opt, {"step": k}, ctx)
        return run_steps(model, opt, batches[k:], ctx.dp_rank, ctx.dp_size, dp_group)
    if kind == "resume":
        extra = load_sharded(task["path"], model, opt, ctx)
        return extra, run_steps(model, opt, batches[extra["step"] :], ctx.dp_rank, ctx.dp_size, dp_group)
    if kind == "meta_init":
        from torch.distributed.tensor import DTensor

        w = model.layers[0].mlp.up_proj.weight
        local = w.to_local() if isinstance(w, DTensor) else w
        full = w.full_tensor() if isinstance(w, DTensor) else w
        half = full.shape[0] // 2
        first_layer_norm = model.layers[0].attn_norm.weight
        norm_full = first_layer_norm.full_tensor() if isinstance(first_layer_norm, DTensor) else first_layer_norm
        loss = run_steps(model, opt, batches, ctx.dp_rank, ctx.dp_size, dp_group)
        return {
            "local_std": local.detach().std().item(),
            "full_std": full.detach().std().item(),
            "halves_equal": torch.equal(full[:half].detach(), full[half:].detach()),
            "norm_weight": norm_full.detach().clone(),
            "losses": loss,
        }
    raise ValueError(f"unknown task kind {kind}")


def tasks_worker(rank: int, world_size: int, tasks: list[dict]) -> list:
    """Run every task in order, each with a context (device mesh) for its own `parallel.tp`.

    The first context starts the process group; later ones reuse it and only build their mesh."""
    from polycom.distributed import ParallelConfig, init_distributed, shutdown

    first = None
    results = []
    try:
        for task in tasks:
            inner = task.get("inner", task)
            ctx = init_distributed(ParallelConfig(tp=inner.get("parallel", {}).get("tp", 1), timeout_s=60))
            first = first or ctx
            results.append(run_task(ctx, task))
    finally:
        shutdown(first)
    return results


def full_grads(model) -> dict[str, torch.Tensor]:
    """name -> full gradient (DTensor gradients gathered), for comparing against one process.

    A DTensor gradient whose placements differ from its parameter's (e.g. Partial for a replicated
    parameter) is reported under "__misplaced__": an optimizer would apply it wrongly."""
    out, misplaced = {}, []
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if hasattr(p.grad, "full_tensor"):
            if tuple(p.grad.placements) != tuple(p.placements):
                misplaced.append(f"{name}: grad {p.grad.placements} vs param {p.placements}")
            g = p.grad.full_tensor()
        else:
            g = p.grad
        out[name] = g.detach().clone()
    out["__misplaced__"] = misplaced
    return out


def reference_grads(model_cfg: dict, dp_size: int, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Gradients of the first global batch in one process, dp micro-batches averaged."""
    return reference_run(model_cfg, 1, dp_size, seed=seed)["grads"]


def full_params(model) -> dict[str, torch.Tensor]:
    """name -> full parameter value (DTensor shards gathered: a collective on every rank)."""
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in model.named_parameters()
    }


FUSED_MLP_NODE = "FusedMLPFunctionBackward"  # grad_fn class of polycom.ops.fused_mlp.FusedMLPFunction's output


def record_mlp_paths(model) -> list[tuple[str, bool]]:
    """Hook every `polycom.MLP` in `model`; each call then appends (its output's grad_fn class name,
    whether up_proj.weight was a DTensor during the call) to the returned list.

    FUSED_MLP_NODE as the name proves that the fused node produced the block's output (so its
    backward runs); any other name (e.g. the down projection's view) means the unfused modules ran.
    The hook sits on the MLP itself: `MLP._fused_kind` only looks at hooks on its projections."""
    from torch.distributed.tensor import DTensor

    from polycom.modules.mlp import MLP

    calls: list[tuple[str, bool]] = []

    def hook(module, args, output):
        calls.append((type(output.grad_fn).__name__, isinstance(module.up_proj.weight, DTensor)))

    for module in model.modules():
        if isinstance(module, MLP):
            module.register_forward_hook(hook)
    return calls


# ----------------------------------------------------------------------------------------------------
# failure modes: they must raise on every rank, quickly, never hang
# ----------------------------------------------------------------------------------------------------


def init_error_worker(rank: int, world_size: int, tp: int) -> str:
    """init_distributed with a layout that does not fit the world size -> the error message."""
    from polycom.distributed import ParallelConfig, init_distributed
    from polycom.errors import UserError

    try:
        init_distributed(ParallelConfig(tp=tp, timeout_s=20))
    except UserError as exc:
        return f"UserError: {exc}"
    return "no error"


def missing_peer_worker(rank: int, world_size: int, timeout_s: int) -> tuple[str, float]:
    """Rank 0 joins the rendezvous; the others never do. -> (rank 0's error, seconds it took)."""
    import time

    from polycom.distributed import ParallelConfig, init_distributed
    from polycom.errors import UserError

    if rank != 0:
        return "skipped", 0.0
    start = time.monotonic()
    try:
        init_distributed(ParallelConfig(timeout_s=timeout_s))
    except UserError as exc:
        return f"UserError: {exc}", time.monotonic() - start
    return "no error", time.monotonic() - start


def skipped_collective_worker(rank: int, world_size: int, timeout_s: int) -> tuple[str, float]:
    """All ranks join; rank 1 then skips an all-reduce that rank 0 waits for -> rank 0's error and time."""
    import time

    import torch.distributed as dist

    from polycom.distributed import ParallelConfig, init_distributed

    init_distributed(ParallelConfig(timeout_s=timeout_s))
    if rank != 0:
        time.sleep(timeout_s + 3)  # stay alive: rank 0 must fail by its own timeout, not by our exit
        return "skipped", 0.0
    start = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1))
    except RuntimeError as exc:
        return f"{type(exc).__name__}: {exc}", time.monotonic() - start
    return "no error", time.monotonic() - start


def tp_polynorm_and_public_api_worker(rank: int, world_size: int, cases: list[dict], seed: int) -> tuple:
    """Both checks in one process group (process start-up dominates the test time)."""
    return tp_polynorm_worker(rank, world_size, cases), public_api_worker(rank, world_size, seed)


def public_api_worker(rank: int, world_size: int, seed: int) -> dict:
    """polycom.PolyNorm / PolyNormGated / polycom.poly_norm given Shard(-1) DTensors (what a column-wise
    linear produces), with plain and with replicated-DTensor coefficients.

    Returns, per variant, the full output and gradients (or the error), and how many collectives the
    tensor-parallel PolyNorm issued (0 when the public op did not dispatch to it)."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import polycom
    from polycom.distributed import ParallelConfig, init_distributed
    from polycom.ops import tensor_parallel as tpn

    ctx = init_distributed(ParallelConfig(tp=world_size, timeout_s=60))
    mesh = ctx.tp_mesh
    calls = {"n": 0}
    _count_collectives(tpn, calls)
    c = make_polynorm_case(seed, (3, 4, 8), 3, torch.float64, gated=True)
    out = {}
    for variant in ("plain_module", "dtensor_module", "plain_gated_module", "dtensor_gated_module", "functional"):
        gated = "gated" in variant
        module = polycom.PolyNormGated(order=3) if gated else polycom.PolyNorm(order=3)
        with torch.no_grad():
            module.weight.copy_(c["weight"])
            module.bias.copy_(c["bias"])
        if variant.startswith("dtensor"):
            for name in ("weight", "bias"):
                param = getattr(module, name)
                module.register_parameter(name, torch.nn.Parameter(distribute_tensor(param.data, mesh, [Replicate()])))
        x = distribute_tensor(c["x"], mesh, [Shard(2)]).requires_grad_()
        up = distribute_tensor(c["up"], mesh, [Shard(2)]).requires_grad_()
        calls["n"] = 0
        try:
            if variant == "functional":
                y = polycom.poly_norm(x, module.weight, module.bias, 1e-6)
            else:
                y = module(x, up) if gated else module(x)
            y.backward(distribute_tensor(c["grad"], mesh, [Shard(2)]))
        except Exception as exc:  # reported to the parent, which decides whether it is expected
            out[variant] = {"error": f"{type(exc).__name__}: {exc}"}
            continue

        def full(t):
            return t.full_tensor() if hasattr(t, "full_tensor") else t

        res = {
            "type": type(y).__name__,
            "y": full(y).detach(),
            "dx": full(x.grad),
            "dw": full(module.weight.grad),
            "db": full(module.bias.grad),
            "collectives": calls["n"],
        }
        if gated:
            res["dup"] = full(up.grad)
        out[variant] = res
    return out


# ----------------------------------------------------------------------------------------------------
# rank failures through the CLI's error handler
# ----------------------------------------------------------------------------------------------------


def cli_rank_failure_worker(rank: int, world_size: int, fail_rank: int, error: str, error_file: str) -> tuple:
    """`polycom train` whose handler fails on `fail_rank` (`error`: "user" -> UserError, "bug" -> RuntimeError)
    while the other ranks wait in a barrier for it -> (exit code, stderr, torchrun error file text or "")."""
    import contextlib
    import io
    import os
    from pathlib import Path

    import torch.distributed as dist

    import polycom.cli.train as train_cli
    from polycom.cli import main
    from polycom.distributed import ParallelConfig, init_distributed
    from polycom.errors import UserError

    path = f"{error_file}.{rank}"
    os.environ["TORCHELASTIC_ERROR_FILE"] = path

    def failing_run(args):
        init_distributed(ParallelConfig(timeout_s=20))
        if rank == fail_rank:
            if error == "user":
                raise UserError("shard train_000.bin holds token id 70000 >= vocab 50000")
            raise RuntimeError("a bug\nwith a second line")
        dist.barrier()  # the failed rank never arrives
        return 0

    train_cli.run = failing_run  # register() reads the module attribute when main() builds the parser
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["train", "--no-progress"])
    text = Path(path).read_text() if os.path.exists(path) else ""
    return code, stderr.getvalue(), text


def save_then_load_worker(rank: int, world_size: int, path: str, phase: str) -> str:
    """phase "save": FSDP2 model + AdamW, one step, save_sharded(path) -> "saved".
    phase "load": load_sharded(path) into a fresh FSDP2 model -> "loaded" or "UserError: ..."."""
    from polycom.distributed import ParallelConfig, init_distributed, parallelize, shutdown
    from polycom.errors import UserError
    from polycom.models import build_model
    from polycom.train.checkpoint import load_sharded, save_sharded

    cfg = ParallelConfig(fsdp=True, timeout_s=30)
    ctx = init_distributed(cfg)
    try:
        torch.manual_seed(0)
        model = parallelize(build_model(tiny_config()), cfg, ctx)
        opt = make_optimizer(model)
        if phase == "save":
            rows = tiny_batches(1)[0].chunk(world_size)[rank]
            model(rows[:, :-1], rows[:, 1:]).loss.backward()
            opt.step()
            save_sharded(path, model, opt, {"step": 1}, ctx)
            return "saved"
        try:
            load_sharded(path, model, opt, ctx)
        except UserError as exc:
            return f"UserError: {exc}"
        return "loaded"
    finally:
        shutdown(ctx)
