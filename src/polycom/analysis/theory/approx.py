"""Empirical approximation rates: sup/L2 error vs parameter count for each activation.

For every target f (see `polycom.analysis.theory.targets`), activation, width K, depth L and seed, an
`FCNet` is fitted to f on ``n_train`` uniform points of [0,1]^d by full-batch Adam (cosine learning
rate) followed by L-BFGS with a strong-Wolfe line search (the usual recipe for training small nets
to convergence). Errors of the fitted net g:

    L2  = sqrt(mean_{x in test} (f(x) - g(x))^2)       test = n_test fresh uniform points
    sup = max_{x in test U grid} |f(x) - g(x)|          grid = equispaced tensor grid of [0,1]^d

Per (target, activation) and size, the best error over the seeds (the approximation error the
architecture can reach; a failed optimisation run is not an approximation property) and the median
are reported. The slope b of log10(err) = a + b log10(P) is fitted by OLS over the sizes with a
Student-t confidence interval (`polycom.analysis.theory.stats`). Theorem 3 predicts b = -n/d for the
limited-smoothness targets (n = smoothness, d = dim) for PolyReLU nets of growing size.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from polycom.analysis.io import provenance, write_json, write_text
from polycom.analysis.theory.fcnet import FC_ACTIVATIONS, FCNet, FCNetConfig, check_fc_activation, fcnet_param_count
from polycom.analysis.theory.stats import fit_loglog_slope
from polycom.analysis.theory.targets import Target, get_target, grid_unit_cube, sample_unit_cube

__all__ = ["ApproxConfig", "FitResult", "fit_one", "run_approx", "summarize_approx", "approx_markdown"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Grid points per axis for the sup error: 1-D 4097, 2-D 129^2, 3-D 33^3 (all ~ 4k-36k points).
_GRID_POINTS = {1: 4097, 2: 129, 3: 33}


def _check_positive_list(name: str, values) -> list[int]:
    values = list(values)
    if not values:
        raise ValueError(f"{name} list is empty; give at least one positive integer")
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise ValueError(f"{name} must be positive integers, got {bad}")
    return sorted(set(values))


@dataclass
class ApproxConfig:
    """Settings of one approximation study (defaults: the CPU-minutes size; see docs/analysis.md)."""

    targets: list[str] = field(default_factory=lambda: ["sin1d", "abspow1d", "sinpoly2d"])
    activations: list[str] = field(default_factory=lambda: list(FC_ACTIVATIONS))
    widths: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32, 48])
    depths: list[int] = field(default_factory=lambda: [2])
    seeds: int = 2
    order: int = 3
    adam_steps: int = 600
    adam_lr: float = 1e-2
    lbfgs_steps: int = 200
    n_train: int = 1024
    n_test: int = 4096
    dtype: str = "float64"
    data_seed: int = 1234

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("targets list is empty; give at least one target function")
        for name in self.targets:
            get_target(name)  # ValueError naming an unknown target
        if not self.activations:
            raise ValueError("activations list is empty; give at least one activation")
        self.activations = [check_fc_activation(a) for a in self.activations]
        self.widths = _check_positive_list("widths", self.widths)
        self.depths = _check_positive_list("depths", self.depths)
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.adam_steps < 0 or self.lbfgs_steps < 0 or self.adam_steps + self.lbfgs_steps == 0:
            raise ValueError("adam_steps and lbfgs_steps must be >= 0 and not both 0")
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(f"n_train and n_test must be >= 1, got {self.n_train} and {self.n_test}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")

    def num_fits(self) -> int:
        return len(self.targets) * len(self.activations) * len(self.widths) * len(self.depths) * self.seeds


@dataclass
class FitResult:
    """One fitted network: its shape, size, errors and optimisation trace summary."""

    target: str
    activation: str
    width: int
    depth: int
    seed: int
    params: int
    l2: float
    sup: float
    train_mse: float
    adam_mse: float
    seconds: float
    cpu_seconds: float
    diverged: bool
    lbfgs_iters: int  # iterations L-BFGS ran (< lbfgs_steps: it stopped on its tolerances)
    grad_norm: float  # ||grad of the training MSE|| at the returned parameters


@dataclass
class _Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor  # test sample, then the grid
    y_eval: torch.Tensor
    n_test: int


def _make_data(target: Target, cfg: ApproxConfig) -> _Data:
    dtype = _DTYPES[cfg.dtype]
    gen = torch.Generator().manual_seed(cfg.data_seed + 7919 * target.dim)
    x_train = sample_unit_cube(cfg.n_train, target.dim, gen, dtype)
    x_test = sample_unit_cube(cfg.n_test, target.dim, gen, dtype)
    grid = grid_unit_cube(_GRID_POINTS[target.dim], target.dim, dtype)
    x_eval = torch.cat([x_test, grid])
    return _Data(x_train, target(x_train), x_eval, target(x_eval), cfg.n_test)


def _mse(net: FCNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.mean((net(x) - y) ** 2)


def _snapshot(net: FCNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class _BestParams:
    """The parameters of `net` with the lowest training loss seen so far (the fit returns those)."""

    def __init__(self, net: FCNet) -> None:
        self.net, self.loss, self.state = net, math.inf, _snapshot(net)

    def offer(self, loss_value: float) -> None:
        if math.isfinite(loss_value) and loss_value < self.loss:
            self.loss, self.state = loss_value, _snapshot(self.net)

    def restore(self) -> None:
        self.net.load_state_dict(self.state)


def _adam_phase(net: FCNet, x: torch.Tensor, y: torch.Tensor, cfg: ApproxConfig, best: _BestParams) -> bool:
    """Adam with cosine decay to 1% of the rate; leaves `net` at the best iterate; True if the loss diverged."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.adam_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.adam_steps, eta_min=cfg.adam_lr * 0.01)
    diverged = False
    for step in range(cfg.adam_steps):
        opt.zero_grad(set_to_none=True)
        loss = _mse(net, x, y)
        if not torch.isfinite(loss):
            diverged = True  # restart L-BFGS from the best Adam iterate instead
            break
        if step % 25 == 0:  # snapshot of the current params (every step would cost more than the step)
            best.offer(float(loss.detach()))
        loss.backward()
        # Clipping keeps the cubic PolyReLU from blowing up early in training.
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        sched.step()
    with torch.no_grad():
        best.offer(float(_mse(net, x, y)))
    best.restore()
    return diverged


def _lbfgs_phase(
    net: FCNet, x: torch.Tensor, y: torch.Tensor, cfg: ApproxConfig, best: _BestParams
) -> tuple[bool, int]:
    """L-BFGS (strong-Wolfe line search); leaves `net` at the best iterate; returns (diverged, iterations run)."""
    lbfgs = torch.optim.LBFGS(
        net.parameters(),
        lr=1.0,
        max_iter=cfg.lbfgs_steps,
        history_size=50,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        lbfgs.zero_grad(set_to_none=True)
        loss = _mse(net, x, y)
        loss.backward()
        return loss

    diverged = False
    try:
        lbfgs.step(closure)
    except RuntimeError:  # a line search that produced NaN internally
        diverged = True
    iters = int(lbfgs.state[lbfgs._params[0]].get("n_iter", 0))
    with torch.no_grad():
        best.offer(float(_mse(net, x, y)))
    best.restore()
    return diverged, iters


def fit_one(target: Target, activation: str, width: int, depth: int, seed: int, cfg: ApproxConfig, data=None):
    """Fit one FCNet to `target` (Adam, then L-BFGS) and measure its errors; returns a FitResult."""
    data = data or _make_data(target, cfg)
    dtype = _DTYPES[cfg.dtype]
    net_cfg = FCNetConfig(target.dim, width, depth, activation, cfg.order)
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FCNet(net_cfg, dtype=dtype)
    x, y = data.x_train, data.y_train
    best = _BestParams(net)
    diverged, lbfgs_iters = False, 0
    if cfg.adam_steps:
        diverged = _adam_phase(net, x, y, cfg, best)
    with torch.no_grad():
        adam_mse = float(_mse(net, x, y))
    best.offer(adam_mse)
    if cfg.lbfgs_steps:
        lbfgs_diverged, lbfgs_iters = _lbfgs_phase(net, x, y, cfg, best)
        diverged = diverged or lbfgs_diverged

    # Convergence record: gradient norm of the training loss at the returned parameters.
    net.zero_grad(set_to_none=True)
    _mse(net, x, y).backward()
    grad_norm = float(torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in net.parameters() if p.grad is not None)))

    with torch.no_grad():
        err = (net(data.x_eval) - data.y_eval).abs()
        l2 = float(torch.sqrt(torch.mean(err[: data.n_test] ** 2)))
        sup = float(err.max())
    if not (math.isfinite(l2) and math.isfinite(sup)):
        diverged = True
    return FitResult(
        target=target.name,
        activation=activation,
        width=width,
        depth=depth,
        seed=seed,
        params=fcnet_param_count(net_cfg),
        l2=l2,
        sup=sup,
        train_mse=best.loss,
        adam_mse=adam_mse,
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
        diverged=diverged,
        lbfgs_iters=lbfgs_iters,
        grad_norm=grad_norm,
    )


_DATA_CACHE: dict[tuple, _Data] = {}


def _fit_task(task: tuple) -> FitResult:
    """One fit (a top-level function so worker processes can run it); data cached per process."""
    target_name, activation, width, depth, seed, cfg = task
    target = get_target(target_name)
    key = (target.name, cfg.n_train, cfg.n_test, cfg.dtype, cfg.data_seed)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = _make_data(target, cfg)
    return fit_one(target, activation, width, depth, seed, cfg, _DATA_CACHE[key])


def _worker_init() -> None:
    # Tiny matmuls: one thread per process beats intra-op threading (and does not oversubscribe).
    torch.set_num_threads(1)
    # Exit when the parent dies (killed, SIGTERM): a pool worker would otherwise keep fitting forever.
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_approx(cfg: ApproxConfig, progress: bool = True, jobs: int = 1) -> dict:
    """Run every fit of `cfg` in `jobs` processes; returns {"config", "provenance", "fits", "summary", "seconds"}.

    Results do not depend on `jobs`: each fit is seeded by its own seed and the shared data seed.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    tasks = [
        (get_target(t).name, a, w, d, s, cfg)
        for t in cfg.targets
        for a in cfg.activations
        for d in cfg.depths
        for w in cfg.widths
        for s in range(cfg.seeds)
    ]
    fits: list[FitResult] = []
    start = time.perf_counter()
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task_id = bar.add_task("approx fits", total=len(tasks))
        if jobs == 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for task in tasks:
                    fits.append(_fit_task(task))
                    bar.advance(task_id)
            finally:
                torch.set_num_threads(threads)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("spawn")  # fork after torch threads started can deadlock
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init) as pool:
                for fit in pool.map(_fit_task, tasks, chunksize=1):
                    fits.append(fit)
                    bar.advance(task_id)
    result = {
        "config": asdict(cfg),
        "provenance": {**provenance(), "jobs": jobs},
        "fits": [asdict(f) for f in fits],
        "seconds": time.perf_counter() - start,
        "fit_cpu_seconds": sum(f.cpu_seconds for f in fits),
    }
    result["summary"] = summarize_approx(result["fits"], cfg)
    return result


def summarize_approx(fits: list[dict], cfg: ApproxConfig) -> dict:
    """Per target and activation: best/median errors per size and fitted log-log slopes with CIs."""
    summary: dict[str, dict] = {}
    for target_name in cfg.targets:
        target = get_target(target_name)
        per_act: dict[str, dict] = {}
        for activation in cfg.activations:
            rows = [f for f in fits if f["target"] == target.name and f["activation"] == activation]
            sizes = sorted({f["params"] for f in rows})
            table = []
            for p in sizes:
                at = [f for f in rows if f["params"] == p and math.isfinite(f["l2"]) and math.isfinite(f["sup"])]
                if not at:
                    continue
                table.append(
                    {
                        "params": p,
                        "width": at[0]["width"],
                        "depth": at[0]["depth"],
                        "l2_best": min(f["l2"] for f in at),
                        "sup_best": min(f["sup"] for f in at),
                        "l2_median": float(np.median([f["l2"] for f in at])),
                        "sup_median": float(np.median([f["sup"] for f in at])),
                        "seeds": len(at),
                    }
                )
            entry: dict = {"sizes": table, "slope_l2": None, "slope_sup": None}
            if len({r["params"] for r in table}) >= 2:
                xs = [r["params"] for r in table]
                entry["slope_l2"] = fit_loglog_slope(xs, [max(r["l2_best"], 1e-300) for r in table]).to_dict()
                entry["slope_sup"] = fit_loglog_slope(xs, [max(r["sup_best"], 1e-300) for r in table]).to_dict()
            per_act[activation] = entry
        all_sizes = [r["params"] for a in per_act.values() for r in a["sizes"]]
        summary[target.name] = {
            "param_decades": math.log10(max(all_sizes) / min(all_sizes)) if all_sizes else 0.0,
            "dim": target.dim,
            "smoothness": None if math.isinf(target.smoothness) else target.smoothness,
            "description": target.description,
            "theory_slope": target.theory_slope,
            "activations": per_act,
        }
    return summary


def _fmt_slope(fit: dict | None) -> str:
    if not fit:
        return "n/a"
    if fit["ci_low"] is None:
        return f"{fit['slope']:.2f}"
    return f"{fit['slope']:.2f} [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]"


def approx_markdown(result: dict) -> str:
    """The markdown report: one table per target (slopes with 95% CIs and the errors at the largest size)."""
    cfg = result["config"]
    lines = [
        "# Empirical approximation rates",
        "",
        f"Fully connected nets, depths {cfg['depths']}, widths {cfg['widths']}, {cfg['seeds']} seed(s) each; "
        f"Adam {cfg['adam_steps']} steps (lr {cfg['adam_lr']:g}, cosine) then L-BFGS {cfg['lbfgs_steps']} "
        f"iterations on {cfg['n_train']} points, {cfg['dtype']}. Errors: L2 = RMS on {cfg['n_test']} test points, "
        "sup = max over test points and a grid. Slopes: OLS fit of log10(best-of-seeds error) on log10(parameters), "
        "95% Student-t interval. Theory (Thm 3): sup error ~ P^(-n/d) for PolyReLU nets.",
        "",
        f"Wall time {result['seconds']:.1f} s with {result['provenance'].get('jobs', 1)} process(es); "
        f"CPU time of the fits {result.get('fit_cpu_seconds', float('nan')):.1f} s.",
        "",
    ]
    for name, entry in result["summary"].items():
        theory = "faster than any power (analytic)" if entry["theory_slope"] is None else f"{entry['theory_slope']:.2f}"
        lines += [
            f"## {name}: {entry['description']} (d = {entry['dim']}, theory slope {theory})",
            "",
            f"Parameter counts span {entry.get('param_decades', 0.0):.2f} decades.",
            "",
            "| activation | params | L2 slope [95% CI] | sup slope [95% CI] | best L2 (largest) | best sup (largest) |",
            "|---|---|---|---|---|---|",
        ]
        for act, a in entry["activations"].items():
            sizes = a["sizes"]
            if not sizes:
                lines.append(f"| {act} | - | n/a | n/a | - | - |")
                continue
            last = sizes[-1]
            lines.append(
                f"| {act} | {sizes[0]['params']}-{last['params']} | {_fmt_slope(a['slope_l2'])} | "
                f"{_fmt_slope(a['slope_sup'])} | {last['l2_best']:.2e} | {last['sup_best']:.2e} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_approx_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """approx.json, approx.md and approx.png in `out_dir` (atomic writes)."""
    from polycom.analysis.theory.plots import plot_approx

    out = Path(out_dir)
    paths = {
        "json": write_json(out / "approx.json", result),
        "markdown": write_text(out / "approx.md", approx_markdown(result)),
    }
    paths["png"] = plot_approx(result, out / "approx.png")
    return paths
