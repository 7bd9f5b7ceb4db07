"""Analyses of trained language models (any nn.Module whose blocks hold MLPs).

* Effective rank (Roy & Vetterli 2007) of every MLP weight W per layer:
      p_i = s_i / sum_j s_j  (s = singular values of W),   erank(W) = exp(-sum_i p_i log p_i)
  1 <= erank <= rank(W); identity (n x n) -> n; rank one -> 1. MoE experts' stacked (E, out, in)
  weights give one erank per expert (mean, min, max reported per layer).
* Layer-wise cosine similarity of hidden states: h_0 = input of block 0, h_l = output of block l;
  S[l, m] = mean over tokens t of cos(h_l[t], h_m[t]) (fp32), an (L+1) x (L+1) matrix; the
  "adjacent" curve is S[l-1, l] (how much block l changes the residual stream's direction).
* Learned PolyCom coefficients per layer (weight highest power first, bias).
* Activation output distribution per layer: the MLP hidden vector after the non-linearity (the
  input of down_proj; for GLUs the gated product), as moments, quantiles and a histogram.

MLPs are found by structure: a module with ``up_proj`` and ``down_proj`` (nn.Linear, or stacked
(E, ., .) expert parameters, under ``experts`` or in the module itself) or a fused ``gate_up_proj``
(Phi-3; transformers 5 stacked experts of OLMoE / Mixtral / Qwen-MoE, gate = first half), and an
activation ``act`` / ``act_fn`` / ``activation_fn`` / ``expert_acts`` (an nn.ModuleList = one per
expert). For transformers' experts the recorded activation output is act(gate), before the product
with up (the experts module has no submodule whose input is the product).
Blocks are the ``layers`` nn.ModuleList of the model (harness `PolyComLM.layers`, HF
``model.model.layers``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from polycom.errors import UserError
from polycom.modules import is_polycom_module

__all__ = [
    "effective_rank",
    "find_mlp_blocks",
    "find_block_list",
    "mlp_weight_ranks",
    "polycom_coefficients",
    "hidden_state_similarity",
    "cosine_similarity_matrix",
    "activation_statistics",
    "analyze_model",
    "ModelAnalysisConfig",
]


# --------------------------------------------------------------------------------------------------
# effective rank
# --------------------------------------------------------------------------------------------------


def effective_rank_from_singular_values(s: torch.Tensor) -> torch.Tensor:
    """exp(entropy of s / sum(s)) over the last dim; s (..., k) >= 0 -> (...,). 0 log 0 = 0."""
    s = s.to(torch.float64)
    total = s.sum(dim=-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("effective rank is undefined for a zero matrix (all singular values are 0)")
    p = s / total
    entropy = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(dim=-1)
    return torch.exp(entropy)


def effective_rank(weight: torch.Tensor) -> float | list[float]:
    """Entropy effective rank of a matrix (out, in) -> float, or of a stack (E, out, in) -> list of E floats.

    Singular values are computed in fp64 whatever the storage dtype.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() not in (2, 3):
        raise ValueError(
            f"effective rank needs a matrix (2-D) or a stack of matrices (3-D), got shape {tuple(weight.shape)}"
        )
    if weight.numel() == 0:
        raise ValueError(f"effective rank of an empty matrix (shape {tuple(weight.shape)}) is undefined")
    s = torch.linalg.svdvals(weight.detach().to(device="cpu", dtype=torch.float64))
    er = effective_rank_from_singular_values(s)
    return float(er) if weight.dim() == 2 else [float(v) for v in er]


# --------------------------------------------------------------------------------------------------
# finding blocks and MLPs
# --------------------------------------------------------------------------------------------------


@dataclass
class MLPBlock:
    """One MLP found in a model: its layer index, module path, weights and activation module(s)."""

    layer: int
    name: str
    module: nn.Module
    weights: dict[str, torch.Tensor]  # gate_proj / up_proj / down_proj (2-D, or 3-D stacked experts)
    acts: list[nn.Module] = field(default_factory=list)
    moe: bool = False

    @property
    def activation_name(self) -> str:
        if not self.acts:
            return "unknown"
        return getattr(self.module, "activation_name", None) or type(self.acts[0]).__name__.lower()


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks: the outermost nn.ModuleList named ``layers`` (or ``h``/``blocks``)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks") and len(module):
            return name, module
    raise UserError(
        f"no list of transformer blocks found in {type(model).__name__} (expected an nn.ModuleList named "
        "'layers', 'h' or 'blocks')"
    )


def _weight_of(obj) -> torch.Tensor | None:
    if isinstance(obj, nn.Linear):
        return obj.weight
    if isinstance(obj, nn.Parameter | torch.Tensor) and obj.dim() in (2, 3):
        return obj
    return None


def _stacked_weights(holder: nn.Module) -> dict[str, torch.Tensor]:
    """gate_proj / up_proj / down_proj of `holder`; a fused ``gate_up_proj`` (Phi-3 (2h, d), transformers 5
    stacked experts (E, 2h, d)) is split into its gate (first half) and up (second half) views."""
    weights = {}
    fused = _weight_of(getattr(holder, "gate_up_proj", None))
    if fused is not None:
        h = fused.shape[-2] // 2
        weights["gate_proj"], weights["up_proj"] = fused[..., :h, :], fused[..., h:, :]
    for key in ("gate_proj", "up_proj", "down_proj"):
        w = _weight_of(getattr(holder, key, None))
        if w is not None and key not in weights:
            weights[key] = w
    return weights


def _activations_of(module: nn.Module) -> list[nn.Module]:
    """``act`` / ``act_fn`` / ``activation_fn`` modules and ``expert_acts``; an nn.ModuleList is one per expert."""
    acts: list[nn.Module] = []
    for key in ("act", "act_fn", "activation_fn", "expert_acts"):
        a = getattr(module, key, None)
        if isinstance(a, nn.ModuleList):
            acts.extend(a)
        elif isinstance(a, nn.Module):
            acts.append(a)
    return acts


def _match_mlp(module: nn.Module) -> tuple[dict[str, torch.Tensor], list[nn.Module], bool] | None:
    holder = module
    experts = getattr(module, "experts", None)
    if isinstance(experts, nn.Module) and any(
        _weight_of(getattr(experts, key, None)) is not None for key in ("up_proj", "gate_up_proj")
    ):
        holder = experts
    weights = _stacked_weights(holder)
    if "up_proj" not in weights or "down_proj" not in weights:
        return None
    moe = weights["down_proj"].dim() == 3
    acts = _activations_of(module) + (_activations_of(holder) if holder is not module else [])
    return weights, acts, moe


def find_mlp_blocks(model: nn.Module) -> list[MLPBlock]:
    """One `MLPBlock` per transformer block that holds an MLP (see module docstring).

    Raises UserError when the model has no MLP of the expected kind (up_proj + down_proj + activation).
    """
    prefix, blocks = find_block_list(model)
    found = []
    for i, block in enumerate(blocks):
        for name, module in block.named_modules():
            match = _match_mlp(module)
            if match is not None:
                weights, acts, moe = match
                found.append(
                    MLPBlock(i, f"{prefix}.{i}.{name}" if name else f"{prefix}.{i}", module, weights, acts, moe)
                )
                break
    if not found:
        raise UserError(
            f"no MLP blocks of the expected kind in {type(model).__name__}: looked for modules with up_proj and "
            "down_proj (nn.Linear or stacked expert weights) and an activation 'act'/'act_fn' inside each of "
            f"{prefix}[0..{len(blocks) - 1}]"
        )
    return found


# --------------------------------------------------------------------------------------------------
# per-layer weight statistics
# --------------------------------------------------------------------------------------------------


def mlp_weight_ranks(mlps: list[MLPBlock]) -> list[dict]:
    """Per layer and weight: shape, effective rank, erank / min(out, in) (experts: mean/min/max over E)."""
    rows = []
    for mlp in mlps:
        entry: dict = {"layer": mlp.layer, "name": mlp.name, "weights": {}}
        for key, w in mlp.weights.items():
            er = effective_rank(w)
            full = min(w.shape[-2], w.shape[-1])
            if isinstance(er, list):
                entry["weights"][key] = {
                    "shape": list(w.shape),
                    "erank": float(np.mean(er)),
                    "erank_min": float(np.min(er)),
                    "erank_max": float(np.max(er)),
                    "erank_per_expert": er,
                    "normalized": float(np.mean(er)) / full,
                }
            else:
                entry["weights"][key] = {"shape": list(w.shape), "erank": er, "normalized": er / full}
        rows.append(entry)
    return rows


def polycom_coefficients(mlps: list[MLPBlock]) -> list[dict]:
    """Per layer: the PolyCom coefficients (weight highest power first, bias); [] when none are PolyCom."""
    rows = []
    for mlp in mlps:
        polys = [a for a in mlp.acts if is_polycom_module(a)]
        if not polys:
            continue
        ws = [a.weight.detach().float().cpu().tolist() for a in polys]
        bs = [float(a.bias.detach().float().cpu()) for a in polys]
        entry = {"layer": mlp.layer, "kind": type(polys[0]).__name__, "weight": ws[0], "bias": bs[0]}
        if len(polys) > 1:  # per-expert coefficients: report the mean and keep all
            entry["weight"] = np.mean(np.array(ws), axis=0).tolist()
            entry["bias"] = float(np.mean(bs))
            entry["per_expert"] = {"weight": ws, "bias": bs}
        rows.append(entry)
    return rows


# --------------------------------------------------------------------------------------------------
# hidden states and activation outputs (forward hooks)
# --------------------------------------------------------------------------------------------------


def _unit_rows(states: list[torch.Tensor]) -> torch.Tensor:
    flat = [t.reshape(-1, t.shape[-1]).to(torch.float64) for t in states]
    return torch.stack([f / f.norm(dim=-1, keepdim=True).clamp_min(1e-30) for f in flat])  # (n, N, d)


def cosine_similarity_matrix(states: list[torch.Tensor]) -> torch.Tensor:
    """S[l, m] = mean over tokens of cos(states[l][t], states[m][t]); states each (..., d) -> (n, n) fp64."""
    if not states:
        raise ValueError("need at least one hidden state")
    if any(s.shape != states[0].shape for s in states):
        raise ValueError("all hidden states must have the same shape")
    unit = _unit_rows(states)  # (n, N, d) unit vectors
    # sum over tokens of <u_l[t], u_m[t]>, divided by N
    return torch.einsum("ltd,mtd->lm", unit, unit) / unit.shape[1]


class _Recorder:
    """Forward hooks: block inputs/outputs and the MLP hidden vector (input of down_proj / output of act)."""

    def __init__(self, blocks: nn.ModuleList, mlps: list[MLPBlock], samples_per_call: int = 50000) -> None:
        self.states: list[list[torch.Tensor]] = [[] for _ in range(len(blocks) + 1)]
        self.samples_per_call = samples_per_call
        self.act_moments = {m.layer: torch.zeros(5, dtype=torch.float64) for m in mlps}  # n, s1, s2, s3, s4
        self.act_samples: dict[int, list[torch.Tensor]] = {m.layer: [] for m in mlps}
        self.act_extremes = {m.layer: [math.inf, -math.inf] for m in mlps}
        self.handles = []
        self.handles.append(blocks[0].register_forward_pre_hook(self._block_input, with_kwargs=True))
        for i, block in enumerate(blocks):
            self.handles.append(block.register_forward_hook(self._block_output(i + 1)))
        for mlp in mlps:
            down = mlp.module.down_proj if isinstance(getattr(mlp.module, "down_proj", None), nn.Linear) else None
            if down is not None:
                self.handles.append(down.register_forward_pre_hook(self._down_input(mlp.layer)))
            else:
                for act in mlp.acts:
                    self.handles.append(act.register_forward_hook(self._act_output(mlp.layer)))

    @staticmethod
    def _first_tensor(value) -> torch.Tensor | None:
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
            return value[0]
        return None

    def _block_input(self, module, args, kwargs):
        x = self._first_tensor(args) if args else None
        if x is None:
            x = kwargs.get("hidden_states", kwargs.get("x"))
        if x is not None:
            self.states[0].append(x.detach().float().cpu())

    def _block_output(self, index: int):
        def hook(module, args, output):
            y = self._first_tensor(output)
            if y is not None:
                self.states[index].append(y.detach().float().cpu())

        return hook

    def _record_act(self, layer: int, h: torch.Tensor) -> None:
        v = h.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
        if v.numel() == 0:
            return
        self.act_moments[layer] += torch.stack(
            [torch.tensor(float(v.numel()), dtype=torch.float64), v.sum(), (v**2).sum(), (v**3).sum(), (v**4).sum()]
        )
        ext = self.act_extremes[layer]
        ext[0], ext[1] = min(ext[0], float(v.min())), max(ext[1], float(v.max()))
        # A bounded random subsample per call, for quantiles and the histogram.
        k = min(v.numel(), self.samples_per_call)
        gen = torch.Generator().manual_seed(len(self.act_samples[layer]))
        self.act_samples[layer].append(v[torch.randint(0, v.numel(), (k,), generator=gen)])

    def _down_input(self, layer: int):
        def hook(module, args):
            x = self._first_tensor(args)
            if x is not None:
                self._record_act(layer, x)

        return hook

    def _act_output(self, layer: int):
        def hook(module, args, output):
            y = self._first_tensor(output)
            if y is not None:
                self._record_act(layer, y)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _moment_stats(m: torch.Tensor) -> dict:
    n, s1, s2, s3, s4 = (float(v) for v in m)
    mean = s1 / n
    var = max(s2 / n - mean**2, 0.0)
    std = math.sqrt(var)
    if std == 0:
        return {"count": int(n), "mean": mean, "std": 0.0, "skewness": 0.0, "kurtosis": 0.0}
    m3 = s3 / n - 3 * mean * s2 / n + 2 * mean**3
    m4 = s4 / n - 4 * mean * s3 / n + 6 * mean**2 * s2 / n - 3 * mean**4
    return {"count": int(n), "mean": mean, "std": std, "skewness": m3 / std**3, "kurtosis": m4 / var**2 - 3.0}


def activation_statistics(rec: _Recorder, bins: int = 120) -> list[dict]:
    """Per layer: exact moments and extremes over all values; quantiles and a histogram from the subsample.

    The histogram spans the layer's [0.05%, 99.95%] quantile range (values outside are counted in
    ``below``/``above``), so that narrow and wide distributions are both resolved.
    """
    rows = []
    qs = [0.0005, 0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999, 0.9995]
    for layer in sorted(rec.act_samples):
        if not rec.act_samples[layer]:
            continue
        sample = torch.cat(rec.act_samples[layer])
        quant = torch.quantile(sample[: 2**24], torch.tensor(qs, dtype=torch.float64)).tolist()
        lo, hi = quant[0], quant[-1]
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        counts = torch.histc(sample, bins, lo, hi)
        stats = _moment_stats(rec.act_moments[layer])
        stats.update(
            {
                "layer": layer,
                "min": rec.act_extremes[layer][0],
                "max": rec.act_extremes[layer][1],
                "quantiles": dict(zip([str(q) for q in qs], quant)),
                "fraction_near_zero": float((sample.abs() < 1e-6).double().mean()),
                "sample_size": int(sample.numel()),
                "histogram": {
                    "edges": torch.linspace(lo, hi, bins + 1, dtype=torch.float64).tolist(),
                    "counts": counts.tolist(),
                    "below": int((sample < lo).sum()),
                    "above": int((sample > hi).sum()),
                },
            }
        )
        rows.append(stats)
    return rows


def hidden_state_similarity(model: nn.Module, input_ids: torch.Tensor) -> dict:
    """Run `model` on input_ids (B, T) with hooks; returns the similarity matrix and the adjacent curve."""
    result = _forward_with_hooks(model, input_ids, find_mlp_blocks(model))
    return result["similarity"]


def _call_model(model: nn.Module, input_ids: torch.Tensor) -> None:
    try:
        model(input_ids=input_ids)
    except TypeError:
        model(input_ids)


@torch.no_grad()
def _forward_with_hooks(model: nn.Module, input_ids: torch.Tensor, mlps: list[MLPBlock], hist_bins: int = 120) -> dict:
    """Run the model a few sequences at a time; accumulate the similarity sums per chunk (bounded memory)."""
    _, blocks = find_block_list(model)
    rec = _Recorder(blocks, mlps)
    was_training = model.training
    model.eval()
    n_states = len(blocks) + 1
    cos_sum = torch.zeros(n_states, n_states, dtype=torch.float64)
    n_tokens = 0
    try:
        for row in input_ids.split(4):
            _call_model(model, row)
            if any(len(s) != 1 for s in rec.states):
                raise UserError("could not capture the hidden states of every block (unexpected block call signature)")
            unit = _unit_rows([s[0] for s in rec.states])
            cos_sum += torch.einsum("ltd,mtd->lm", unit, unit)
            n_tokens += unit.shape[1]
            for s in rec.states:
                s.clear()
    finally:
        rec.remove()
        model.train(was_training)
    sim = cos_sum / n_tokens
    adjacent = [float(sim[i - 1, i]) for i in range(1, n_states)]
    return {
        "similarity": {"matrix": sim.tolist(), "adjacent": adjacent, "tokens": n_tokens},
        "activations": activation_statistics(rec, hist_bins),
    }


# --------------------------------------------------------------------------------------------------
# the whole analysis of one model
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelAnalysisConfig:
    """Validation input size and histogram range of `analyze_model`."""

    tokens: int = 8192
    seq_len: int = 256
    hist_bins: int = 120

    def __post_init__(self) -> None:
        if self.tokens < 2 or self.seq_len < 2:
            raise ValueError(f"tokens and seq_len must be >= 2, got {self.tokens} and {self.seq_len}")
        if self.hist_bins < 2:
            raise ValueError(f"hist_bins must be >= 2, got {self.hist_bins}")


def windows(token_ids, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Cut a 1-D token sequence into (B, seq_len) rows, at most max_tokens tokens in all."""
    ids = torch.as_tensor(np.asarray(token_ids[: max(max_tokens, seq_len)], dtype=np.int64))
    if ids.numel() < seq_len:
        seq_len = int(ids.numel())
        if seq_len < 2:
            raise UserError(f"the validation text has only {ids.numel()} token(s); need at least 2")
    n = max(1, min(max_tokens, ids.numel()) // seq_len)
    return ids[: n * seq_len].reshape(n, seq_len)


def analyze_model(model: nn.Module, input_ids: torch.Tensor, cfg: ModelAnalysisConfig | None = None) -> dict:
    """Effective ranks, PolyCom coefficients, hidden-state similarity and activation statistics of `model`."""
    cfg = cfg or ModelAnalysisConfig()
    mlps = find_mlp_blocks(model)
    fwd = _forward_with_hooks(model, input_ids, mlps, cfg.hist_bins)
    return {
        "n_layers": len(find_block_list(model)[1]),
        "activation": mlps[0].activation_name,
        "moe": mlps[0].moe,
        "parameters": sum(p.numel() for p in model.parameters()),
        "effective_rank": mlp_weight_ranks(mlps),
        "polycom_coefficients": polycom_coefficients(mlps),
        "similarity": fwd["similarity"],
        "activations": fwd["activations"],
        "input_shape": list(input_ids.shape),
    }


def summary_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "model_analysis.json"
