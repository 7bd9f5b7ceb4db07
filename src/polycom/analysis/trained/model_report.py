"""`polycom analyze model`: analyse several trained models and write one overlaid report.

Outputs in the output folder: model_analysis.json (everything, per run), model_analysis.md (summary
tables), model_erank.png, model_similarity.png, model_activations.png and, when at least one run
uses a PolyCom activation, model_coefficients.png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from polycom.analysis.io import provenance, write_json, write_text
from polycom.analysis.trained.model_analysis import ModelAnalysisConfig, analyze_model, windows
from polycom.analysis.trained.runs import load_analysis_model, validation_tokens
from polycom.errors import UserError

__all__ = ["analyze_runs", "model_markdown", "write_model_outputs"]


def _embedding_rows(model: torch.nn.Module) -> int | None:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else getattr(model, "embed", None)
    return int(emb.weight.shape[0]) if emb is not None and hasattr(emb, "weight") else None


def _max_seq_len(loaded) -> int | None:
    cfg = getattr(loaded.model, "config", None)
    for key in ("max_seq_len", "max_position_embeddings"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def analyze_runs(
    paths: list[str],
    labels: list[str] | None = None,
    cfg: ModelAnalysisConfig | None = None,
    data: str | None = None,
    text: str | None = None,
    device: str = "cpu",
    *,
    safe: bool = False,
    trust_remote_code: bool = False,
) -> dict:
    """Load and analyse every folder in `paths`; returns {"provenance", "config", "runs": [...]}.

    safe / trust_remote_code: how folders are opened (`polycom.analysis.trained.runs.load_analysis_model`).
    """
    cfg = cfg or ModelAnalysisConfig()
    if not paths:
        raise UserError("give at least one --run folder")
    if labels and len(labels) != len(paths):
        raise UserError(f"got {len(labels)} --label value(s) for {len(paths)} --run folder(s); give one per run")
    runs = []
    for i, path in enumerate(paths):
        loaded = load_analysis_model(
            path, labels[i] if labels else None, device=device, safe=safe, trust_remote_code=trust_remote_code
        )
        ids, source = validation_tokens(loaded, cfg.tokens, data=data, text=text)
        vocab = _embedding_rows(loaded.model)
        if vocab is not None and ids.size and int(ids.max()) >= vocab:
            raise UserError(
                f"validation token id {int(ids.max())} is outside the vocabulary ({vocab}) of {path}; "
                "pass --data/--text matching the model's tokenizer"
            )
        seq_len = min(cfg.seq_len, _max_seq_len(loaded) or cfg.seq_len)
        input_ids = windows(ids, seq_len, cfg.tokens).to(device)
        result = analyze_model(loaded.model, input_ids, cfg)
        activation = loaded.config.get("model", {}).get("activation") if loaded.kind == "run" else None
        result.update(
            {
                "label": loaded.label,
                "path": loaded.path,
                "kind": loaded.kind,
                "validation_source": source,
                "activation": activation or result["activation"],
            }
        )
        runs.append(result)
    labels_seen = [r["label"] for r in runs]
    if len(set(labels_seen)) != len(labels_seen):
        for i, r in enumerate(runs):  # folders with the same name: make the labels unique
            r["label"] = f"{r['label']}#{i}"
    return {
        "provenance": provenance(),
        "config": {"tokens": cfg.tokens, "seq_len": cfg.seq_len, "hist_bins": cfg.hist_bins},
        "runs": runs,
    }


def _mean_erank(run: dict, key: str) -> float | None:
    vals = [layer["weights"][key]["erank"] for layer in run["effective_rank"] if key in layer["weights"]]
    return float(np.mean(vals)) if vals else None


def model_markdown(report: dict) -> str:
    lines = [
        "# Model analysis",
        "",
        "Effective rank = exp(entropy of normalised singular values), per MLP weight (mean over layers here; "
        "per layer in the JSON and plots). Similarity = mean over tokens of the cosine between the hidden "
        "states entering and leaving each block. Activation output = the MLP hidden vector fed to down_proj.",
        "",
        "| run | activation | layers | params | erank gate | erank up | erank down | mean adjacent cos | "
        "act. std (mean) | act. kurtosis (mean) | tokens | validation text |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    for r in report["runs"]:
        acts = r["activations"]
        lines.append(
            f"| {r['label']} | {r['activation']} | {r['n_layers']} | {r['parameters']:,} | "
            f"{fmt(_mean_erank(r, 'gate_proj'))} | {fmt(_mean_erank(r, 'up_proj'))} | {fmt(_mean_erank(r, 'down_proj'))} | "
            f"{fmt(float(np.mean(r['similarity']['adjacent'])), '.3f')} | "
            f"{fmt(float(np.mean([a['std'] for a in acts])) if acts else None, '.3f')} | "
            f"{fmt(float(np.mean([a['kurtosis'] for a in acts])) if acts else None, '.2f')} | "
            f"{r['similarity']['tokens']} | {r['validation_source']} |"
        )
    poly = [r for r in report["runs"] if r["polycom_coefficients"]]
    if poly:
        lines += ["", "## PolyCom coefficients (weight highest power first; bias)", ""]
        for r in poly:
            lines += [f"### {r['label']} ({r['activation']})", "", "| layer | weight | bias |", "|---|---|---|"]
            for c in r["polycom_coefficients"]:
                lines.append(f"| {c['layer']} | {', '.join(f'{w:.4f}' for w in c['weight'])} | {c['bias']:.4f} |")
            lines.append("")
    lines += ["", "## Effective rank per layer", ""]
    for r in report["runs"]:
        keys = [
            k
            for k in ("gate_proj", "up_proj", "down_proj")
            if any(k in layer["weights"] for layer in r["effective_rank"])
        ]
        lines += [f"### {r['label']}", "", "| layer | " + " | ".join(f"{k} erank (shape)" for k in keys) + " |"]
        lines.append("|---|" + "---|" * len(keys))
        for layer in r["effective_rank"]:
            cells = [
                f"{layer['weights'][k]['erank']:.1f} ({'x'.join(map(str, layer['weights'][k]['shape']))})" for k in keys
            ]
            lines.append(f"| {layer['layer']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_model_outputs(report: dict, out_dir: str | Path) -> dict[str, Path]:
    from polycom.analysis.trained.plots import (
        plot_model_activations,
        plot_model_coefficients,
        plot_model_erank,
        plot_model_similarity,
    )

    out = Path(out_dir)
    paths = {
        "json": write_json(out / "model_analysis.json", report),
        "markdown": write_text(out / "model_analysis.md", model_markdown(report)),
        "erank_png": plot_model_erank(report, out / "model_erank.png"),
        "similarity_png": plot_model_similarity(report, out / "model_similarity.png"),
        "activations_png": plot_model_activations(report, out / "model_activations.png"),
    }
    if any(r["polycom_coefficients"] for r in report["runs"]):
        paths["coefficients_png"] = plot_model_coefficients(report, out / "model_coefficients.png")
    return paths
