"""The constructive results: ReLU / ReLU^2 nets inside PolyReLU nets, and ReLU nets for x^2, x^3.

1. Exact representation (Lemma 1 / Theorem 1). PolyReLU_a(z) = a_3 relu(z)^3 + a_2 relu(z)^2 +
   a_1 relu(z) + a_0 (module ``weight = [a_3, a_2, a_1]``, ``bias = [a_0]``). With weight = [0, 0, 1]
   it is ReLU and with weight = [0, 1, 0] it is ReLU^2, so a ReLU (or ReLU^2) net of depth L and
   width K becomes a PolyReLU net of the same depth and width with the same linear layers (plus
   the r + 1 = 4 activation scalars per layer) computing the same function. `to_polyrelu` builds
   it; `verify_representation` checks it on random inputs (in fp32 the two are bitwise equal: the
   extra terms are exact zeros).

2. ReLU size for one PolyReLU unit (Lemma 2 / Theorem 2). On [0,1], x^2 and x^3 are single
   PolyReLU units (eps = 0). A ReLU net needs a size growing like log(1/eps). We build Yarotsky's
   (2017) sawtooth nets explicitly: with the hat g(t) = 2 relu(t) - 4 relu(t - 1/2) on [0,1] and
   g_s = g o ... o g (s times),

       f_m(x) = x - sum_{s=1..m} g_s(x) / 4^s,      sup_{[0,1]} |f_m(x) - x^2| = 4^-(m+1),

   a ReLU net with m hidden layers (width 2, then 3). x^3 = x * x^2 uses the polarisation
   xy = 2((x+y)/2)^2 - x^2/2 - y^2/2 with y = f_m(x) and three more f_m in parallel. For each eps we
   report the smallest construction whose measured sup error (dense grid, fp64) is <= eps, its size
   (nonzero weights + biases) and a linear fit of size vs log2(1/eps).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from polycom.analysis.io import provenance, write_json, write_text
from polycom.modules.activations import ReLU2
from polycom.modules.polycom import PolyReLU

__all__ = [
    "random_relu_net",
    "to_polyrelu",
    "verify_representation",
    "AffineReLUNet",
    "square_net",
    "cube_net",
    "construction_curve",
    "run_represent",
    "represent_markdown",
    "write_represent_outputs",
]

# Coefficients (weight = [a_3, a_2, a_1], bias a_0) that turn PolyReLU of order 3 into each activation.
_POLYRELU_COEFFS = {"relu": [0.0, 0.0, 1.0], "relu2": [0.0, 1.0, 0.0]}


# --------------------------------------------------------------------------------------------------
# 1. ReLU / ReLU^2 nets -> PolyReLU nets
# --------------------------------------------------------------------------------------------------


def random_relu_net(
    in_dim: int, widths: list[int], out_dim: int, activation: str = "relu", generator: torch.Generator | None = None
) -> nn.Sequential:
    """Linear(in, K1), act, ..., Linear(K_L, out) with random N(0, 1/fan_in) weights and N(0, 0.1) biases."""
    if activation not in _POLYRELU_COEFFS:
        raise ValueError(f"activation must be one of {', '.join(_POLYRELU_COEFFS)}, got {activation!r}")
    if in_dim < 1 or out_dim < 1 or not widths or any(w < 1 for w in widths):
        raise ValueError(f"need in_dim, out_dim >= 1 and a non-empty list of positive widths, got {widths}")
    dims = [in_dim, *widths, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=generator) / math.sqrt(a))
            lin.bias.copy_(0.1 * torch.randn(b, generator=generator))
        layers.append(lin)
        if i < len(dims) - 2:
            layers.append(nn.ReLU() if activation == "relu" else ReLU2())
    return nn.Sequential(*layers)


def _activation_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, ReLU2):
        return "relu2"
    return None


def to_polyrelu(net: nn.Sequential) -> nn.Sequential:
    """The PolyReLU net (same linear layers, PolyReLU order 3 in place of each ReLU/ReLU^2).

    `net` must be an nn.Sequential of nn.Linear and nn.ReLU / polycom ReLU2 modules; anything else
    raises ValueError naming the module. The result is a deep copy (the source is not modified).
    """
    if not isinstance(net, nn.Sequential):
        raise ValueError(f"expected an nn.Sequential of Linear and ReLU/ReLU2 layers, got {type(net).__name__}")
    for i, module in enumerate(net):
        if not isinstance(module, nn.Linear) and _activation_kind(module) is None:
            raise ValueError(
                f"layer {i} is {type(module).__name__}; only nn.Linear, nn.ReLU and ReLU2 layers can be converted"
            )
    if not any(_activation_kind(m) for m in net):
        raise ValueError("the network has no ReLU or ReLU2 activation to replace")
    out: list[nn.Module] = []
    for module in net:
        kind = _activation_kind(module)
        if isinstance(module, nn.Linear):
            out.append(copy.deepcopy(module))
        else:
            act = PolyReLU(order=3)
            with torch.no_grad():
                act.weight.copy_(torch.tensor(_POLYRELU_COEFFS[kind]))
                act.bias.zero_()
            out.append(act)
    return nn.Sequential(*out)


@dataclass(frozen=True)
class RepresentationCheck:
    """Result of comparing a source net with its PolyReLU representation on random inputs."""

    activation: str
    in_dim: int
    widths: list[int]
    out_dim: int
    n_inputs: int
    input_range: float
    max_abs_diff: float
    max_abs_output: float
    bitwise_equal: bool
    source_params: int
    polyrelu_params: int
    polyrelu_linear_params: int


def verify_representation(
    source: nn.Sequential, n_inputs: int = 4096, input_range: float = 2.0, generator: torch.Generator | None = None
) -> RepresentationCheck:
    """Build `to_polyrelu(source)` and compare both on n_inputs points of U[-range, range]^in_dim."""
    poly = to_polyrelu(source)
    linears = [m for m in source if isinstance(m, nn.Linear)]
    in_dim, out_dim = linears[0].in_features, linears[-1].out_features
    widths = [m.out_features for m in linears[:-1]]
    kind = next(_activation_kind(m) for m in source if _activation_kind(m))
    x = (2 * torch.rand(n_inputs, in_dim, generator=generator) - 1) * input_range
    with torch.no_grad():
        y_src, y_poly = source(x), poly(x)
    lin_params = sum(p.numel() for m in poly if isinstance(m, nn.Linear) for p in m.parameters())
    return RepresentationCheck(
        activation=kind,
        in_dim=in_dim,
        widths=widths,
        out_dim=out_dim,
        n_inputs=n_inputs,
        input_range=input_range,
        max_abs_diff=float((y_src - y_poly).abs().max()),
        max_abs_output=float(y_src.abs().max()),
        bitwise_equal=bool(torch.equal(y_src, y_poly)),
        source_params=sum(p.numel() for p in source.parameters()),
        polyrelu_params=sum(p.numel() for p in poly.parameters()),
        polyrelu_linear_params=lin_params,
    )


# --------------------------------------------------------------------------------------------------
# 2. Explicit ReLU nets (affine layers with ReLU between them) for x^2 and x^3 on [0, 1]
# --------------------------------------------------------------------------------------------------


class AffineReLUNet:
    """A ReLU net as a list of affine maps (W (out, in), b (out,)) with ReLU after every one but the last.

    Kept in fp64 numpy so that constructions compose exactly; `to_torch` gives the nn.Sequential.
    """

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
        if not layers:
            raise ValueError("a network needs at least one affine layer")
        for (w0, _), (w1, _) in zip(layers[:-1], layers[1:]):
            if w1.shape[1] != w0.shape[0]:
                raise ValueError(f"layer shapes do not chain: {w0.shape} then {w1.shape}")
        self.layers = [(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)) for w, b in layers]

    @property
    def in_dim(self) -> int:
        return self.layers[0][0].shape[1]

    @property
    def out_dim(self) -> int:
        return self.layers[-1][0].shape[0]

    @property
    def depth(self) -> int:
        """Number of hidden (ReLU) layers."""
        return len(self.layers) - 1

    @property
    def neurons(self) -> int:
        return sum(w.shape[0] for w, _ in self.layers[:-1])

    def nonzero_params(self) -> int:
        """Nonzero weights and biases (the usual size measure of sparse constructions)."""
        return int(sum(np.count_nonzero(w) + np.count_nonzero(b) for w, b in self.layers))

    def dense_params(self) -> int:
        """Weights and biases of the dense layers of the same shapes."""
        return int(sum(w.size + b.size for w, b in self.layers))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (N, in_dim) -> (N, out_dim), fp64."""
        h = np.asarray(x, dtype=np.float64)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h

    def to_torch(self) -> nn.Sequential:
        mods: list[nn.Module] = []
        for i, (w, b) in enumerate(self.layers):
            lin = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b))
            mods.append(lin)
            if i < len(self.layers) - 1:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)


def affine(w, b) -> AffineReLUNet:
    """A depth-0 net: x -> W x + b."""
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    return AffineReLUNet([(w, np.asarray(b, dtype=np.float64).reshape(w.shape[0]))])


def compose(outer: AffineReLUNet, inner: AffineReLUNet) -> AffineReLUNet:
    """outer o inner: inner's last affine map is merged into outer's first (no extra layer)."""
    if outer.in_dim != inner.out_dim:
        raise ValueError(f"cannot compose: outer takes {outer.in_dim} inputs, inner gives {inner.out_dim}")
    wi, bi = inner.layers[-1]
    wo, bo = outer.layers[0]
    merged = (wo @ wi, wo @ bi + bo)
    return AffineReLUNet([*inner.layers[:-1], merged, *outer.layers[1:]])


def parallel(nets: list[AffineReLUNet]) -> AffineReLUNet:
    """Nets of equal depth on a common input, outputs concatenated (block-diagonal hidden layers)."""
    depth, in_dim = nets[0].depth, nets[0].in_dim
    if any(n.depth != depth or n.in_dim != in_dim for n in nets):
        raise ValueError("parallel nets need the same depth and input dimension")
    layers = []
    for j in range(depth + 1):
        ws = [n.layers[j][0] for n in nets]
        bs = [n.layers[j][1] for n in nets]
        if j == 0:
            w = np.concatenate(ws, axis=0)
        else:
            w = np.zeros((sum(x.shape[0] for x in ws), sum(x.shape[1] for x in ws)))
            r = c = 0
            for x in ws:
                w[r : r + x.shape[0], c : c + x.shape[1]] = x
                r, c = r + x.shape[0], c + x.shape[1]
        layers.append((w, np.concatenate(bs)))
    return AffineReLUNet(layers)


def carry_net(depth: int) -> AffineReLUNet:
    """Identity on x >= 0 through `depth` hidden layers of one unit (relu(x) = x for x >= 0)."""
    return AffineReLUNet([(np.ones((1, 1)), np.zeros(1))] * depth + [(np.ones((1, 1)), np.zeros(1))])


def square_net(m: int) -> AffineReLUNet:
    """Yarotsky's f_m ~ x^2 on [0,1] with m >= 1 hidden layers; sup error 4^-(m+1)."""
    if m < 1:
        raise ValueError(f"the sawtooth level m must be >= 1, got {m}")
    # Hidden layer 1: u = (relu(x), relu(x - 1/2)); g_1 = 2u1 - 4u2; acc_1 = x - g_1/4 = u1/2 + u2.
    layers = [(np.array([[1.0], [1.0]]), np.array([0.0, -0.5]))]
    g_read = np.array([2.0, -4.0])
    acc_read = np.array([0.5, 1.0])
    for j in range(2, m + 1):
        # Hidden layer j: (relu(g_{j-1}), relu(g_{j-1} - 1/2), relu(acc_{j-1})); acc >= x^2 >= 0 passes unchanged.
        w = np.stack([g_read, g_read, acc_read])
        layers.append((w, np.array([0.0, -0.5, 0.0])))
        scale = 4.0**-j
        g_read = np.array([2.0, -4.0, 0.0])
        acc_read = np.array([-2.0 * scale, 4.0 * scale, 1.0])
    layers.append((acc_read.reshape(1, -1), np.zeros(1)))
    return AffineReLUNet(layers)


def cube_net(m: int) -> AffineReLUNet:
    """x^3 on [0,1]: y = f_m(x), then x*y = 2 f_m((x+y)/2) - f_m(x)/2 - f_m(y)/2; depth 2m."""
    stage1 = parallel([square_net(m), carry_net(m)])  # outputs (y, x), both in [0, 1]
    halves = compose(square_net(m), affine([[0.5, 0.5]], [0.0]))
    sq_x = compose(square_net(m), affine([[0.0, 1.0]], [0.0]))
    sq_y = compose(square_net(m), affine([[1.0, 0.0]], [0.0]))
    stage2 = parallel([halves, sq_x, sq_y])
    combine = affine([[2.0, -0.5, -0.5]], [0.0])
    return compose(combine, compose(stage2, stage1))


_FUNCTIONS = {"x^2": (square_net, lambda x: x**2), "x^3": (cube_net, lambda x: x**3)}


def _sup_error(net: AffineReLUNet, fn, m: int, generator: np.random.Generator) -> float:
    # Breakpoints of the level-m sawtooth sit on the 2^-m grid; a grid 16x finer plus random points
    # resolves the error maxima (midpoints for x^2) to well below the reported digits.
    n = max(2 ** (m + 4), 4096) + 1
    x = np.concatenate([np.linspace(0.0, 1.0, n), generator.random(4096)]).reshape(-1, 1)
    return float(np.max(np.abs(net(x)[:, 0] - fn(x[:, 0]))))


def construction_curve(function: str, max_level: int = 12, eps_list: list[float] | None = None) -> dict:
    """Sup error and size of the ReLU construction for `function` ("x^2" or "x^3") at levels 1..max_level,
    and, per eps, the smallest level reaching it. Also checks the torch version of one net."""
    if function not in _FUNCTIONS:
        raise ValueError(f"unknown function {function!r}; choose from {', '.join(_FUNCTIONS)}")
    if max_level < 2:
        raise ValueError(f"max_level must be >= 2, got {max_level}")
    build, fn = _FUNCTIONS[function]
    rng = np.random.default_rng(0)
    levels = []
    for m in range(1, max_level + 1):
        net = build(m)
        levels.append(
            {
                "level": m,
                "sup_error": _sup_error(net, fn, m, rng),
                "params": net.nonzero_params(),
                "dense_params": net.dense_params(),
                "neurons": net.neurons,
                "depth": net.depth,
            }
        )
    # The torch module computes the same function as the numpy net (sanity check of to_torch).
    net = build(min(4, max_level))
    xs = np.linspace(0, 1, 257).reshape(-1, 1)
    with torch.no_grad():
        torch_out = net.to_torch()(torch.from_numpy(xs)).numpy()
    torch_matches = bool(np.allclose(torch_out, net(xs), rtol=0, atol=1e-12))

    eps_list = eps_list or [10.0**-k for k in range(1, 9)]
    need = []
    poly_params = polyrelu_unit_params()
    for eps in sorted(eps_list, reverse=True):
        hit = next((lv for lv in levels if lv["sup_error"] <= eps), None)
        if hit is None:
            continue  # not reachable within max_level; reported as missing
        need.append(
            {
                "eps": eps,
                "level": hit["level"],
                "relu_params": hit["params"],
                "relu_neurons": hit["neurons"],
                "relu_depth": hit["depth"],
                "polyrelu_params": poly_params,
            }
        )
    fit = None
    if len(need) >= 3:
        lx = np.array([math.log2(1 / n["eps"]) for n in need])
        ly = np.array([n["relu_params"] for n in need], dtype=float)
        slope, intercept = np.polyfit(lx, ly, 1)
        resid = ly - (intercept + slope * lx)
        sst = float(np.sum((ly - ly.mean()) ** 2))
        fit = {
            "slope": float(slope),
            "intercept": float(intercept),
            "r2": 1.0 - float(np.sum(resid**2)) / sst if sst else 1.0,
            "unit": "params per bit of accuracy (log2(1/eps))",
        }
    return {
        "function": function,
        "levels": levels,
        "size_for_eps": need,
        "unreached_eps": [e for e in eps_list if e not in {n["eps"] for n in need}],
        "size_vs_log_eps_fit": fit,
        "torch_matches_numpy": torch_matches,
    }


def polyrelu_unit_params() -> int:
    """All parameters of the PolyReLU net x -> W2 PolyReLU(W1 x + b1) + b2 with one unit: 1+1+4+1+1 = 8."""
    net = nn.Sequential(nn.Linear(1, 1), PolyReLU(order=3), nn.Linear(1, 1))
    return sum(p.numel() for p in net.parameters())


def polyrelu_unit(function: str) -> nn.Sequential:
    """The exact one-unit PolyReLU net for x^2 (weight [0,1,0]) or x^3 (weight [1,0,0]) on x >= 0."""
    coeffs = {"x^2": [0.0, 1.0, 0.0], "x^3": [1.0, 0.0, 0.0]}
    if function not in coeffs:
        raise ValueError(f"unknown function {function!r}; choose from {', '.join(coeffs)}")
    net = nn.Sequential(nn.Linear(1, 1), PolyReLU(order=3), nn.Linear(1, 1))
    with torch.no_grad():
        for lin in (net[0], net[2]):
            lin.weight.fill_(1.0)
            lin.bias.zero_()
        net[1].weight.copy_(torch.tensor(coeffs[function]))
        net[1].bias.zero_()
    return net


# --------------------------------------------------------------------------------------------------
# The `polycom analyze represent` report
# --------------------------------------------------------------------------------------------------

DEFAULT_SHAPES: list[tuple[int, list[int], int]] = [
    (1, [8], 1),
    (3, [16, 16], 2),
    (5, [32, 7, 19], 4),
    (2, [64, 64, 64, 64], 1),
    (16, [128, 128], 8),
]


def run_represent(
    max_level: int = 14, shapes: list[tuple[int, list[int], int]] | None = None, n_inputs: int = 4096, seed: int = 0
) -> dict:
    """Representation checks on random nets of several shapes + the x^2 / x^3 ReLU size curves.

    Runs torch single-threaded (tiny tensors: intra-op threads only spin) and restores the setting.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_represent(max_level, shapes, n_inputs, seed)
    finally:
        torch.set_num_threads(threads)


def _run_represent(max_level: int, shapes, n_inputs: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    checks = []
    for activation in ("relu", "relu2"):
        for in_dim, widths, out_dim in shapes or DEFAULT_SHAPES:
            net = random_relu_net(in_dim, widths, out_dim, activation, generator=gen)
            checks.append(verify_representation(net, n_inputs=n_inputs, generator=gen).__dict__)
    # The exact PolyReLU units for x^2 and x^3: their sup error on [0,1] (expected 0 up to rounding).
    xs = torch.linspace(0, 1, 4097, dtype=torch.float32).reshape(-1, 1)
    units = {}
    for name, fn in (("x^2", lambda t: t**2), ("x^3", lambda t: t**3)):
        with torch.no_grad():
            err = float((polyrelu_unit(name)(xs) - fn(xs)).abs().max())
        units[name] = {"params": polyrelu_unit_params(), "sup_error_fp32": err}
    return {
        "provenance": provenance(),
        "representation_checks": checks,
        "polyrelu_units": units,
        "relu_constructions": {f: construction_curve(f, max_level) for f in _FUNCTIONS},
    }


def represent_markdown(result: dict) -> str:
    lines = [
        "# Exact representation and ReLU size for PolyReLU units",
        "",
        "## ReLU / ReLU^2 nets as PolyReLU nets (same depth and width)",
        "",
        "PolyReLU weight [0, 0, 1] = ReLU, [0, 1, 0] = ReLU^2; linear layers copied. Outputs compared on "
        f"random inputs in [-{result['representation_checks'][0]['input_range']:g}, "
        f"{result['representation_checks'][0]['input_range']:g}]^d (fp32, CPU).",
        "",
        "| source | in | widths | out | inputs | max abs diff | bitwise equal | source params | PolyReLU params (linear + 4/layer) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["representation_checks"]:
        lines.append(
            f"| {c['activation']} | {c['in_dim']} | {c['widths']} | {c['out_dim']} | {c['n_inputs']} | "
            f"{c['max_abs_diff']:.1e} | {c['bitwise_equal']} | {c['source_params']} | "
            f"{c['polyrelu_params']} ({c['polyrelu_linear_params']} + {c['polyrelu_params'] - c['polyrelu_linear_params']}) |"
        )
    lines += [
        "",
        "## Size a ReLU net needs for error eps on x^2, x^3 over [0, 1]",
        "",
        "Yarotsky sawtooth constructions, sup error measured on a dense grid in fp64; size = nonzero weights "
        "and biases. A one-unit PolyReLU net computes each function exactly with "
        f"{next(iter(result['polyrelu_units'].values()))['params']} parameters (all of them, dense). Paper: "
        "ReLU size Omega(ln(1/eps)) (Thm 2 lower bound), O(ln^2(1/eps)) (Lemma 2 upper bound).",
        "",
    ]
    for fname, curve in result["relu_constructions"].items():
        fit = curve["size_vs_log_eps_fit"]
        fit_text = (
            f"linear fit: size = {fit['intercept']:.1f} + {fit['slope']:.1f} * log2(1/eps), R^2 = {fit['r2']:.4f}"
            if fit
            else "too few points for a fit"
        )
        lines += [
            f"### {fname} ({fit_text})",
            "",
            "| eps | level m | ReLU params | ReLU neurons | ReLU depth | PolyReLU params |",
            "|---|---|---|---|---|---|",
        ]
        for n in curve["size_for_eps"]:
            lines.append(
                f"| {n['eps']:.0e} | {n['level']} | {n['relu_params']} | {n['relu_neurons']} | {n['relu_depth']} | "
                f"{n['polyrelu_params']} |"
            )
        if curve["unreached_eps"]:
            lines.append(f"\nNot reached within the levels built: eps = {curve['unreached_eps']}")
        lines.append("")
    return "\n".join(lines)


def write_represent_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    from polycom.analysis.theory.plots import plot_represent

    out = Path(out_dir)
    return {
        "json": write_json(out / "represent.json", result),
        "markdown": write_text(out / "represent.md", represent_markdown(result)),
        "png": plot_represent(result, out / "represent.png"),
    }
