"""What `polycom.hf.convert` changed: `MLPChange` per MLP or expert block, `ConversionReport` for the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from itertools import groupby

from polycom.utils.terminal import COMPACT_WIDTH, wrap

# structures (`polycom.hf.mlp_finder`) whose activation multiplies a separate up branch
GATED_KINDS = ("gated", "fused", "experts")


@dataclass
class MLPChange:
    """One MLP (or stacked-expert block) that `convert` changed."""

    name: str  # module path, e.g. "model.layers.0.mlp" or "model.layers.0.mlp.experts"
    kind: str  # structure found: "gated", "plain", "fused", "experts" (stacked gated), "experts-plain"
    action: str  # "activation replaced" or "rewritten as plain PolyCom MLP" / "... experts"
    old_activation: str  # class name of the activation it had
    activation_attr: str  # attribute that held it (e.g. "act_fn", "act")
    d_model: int
    hidden_before: int  # MLP width (per expert for expert blocks)
    hidden_after: int
    params_before: int  # the whole block (all experts)
    params_after: int
    num_experts: int = 0  # experts in the block, 0 for a dense MLP
    coefficient_sets: int = 1  # PolyCom coefficient sets: 1 (shared by the block's experts) or num_experts


@dataclass
class ConversionReport:
    """What `convert` did: per-MLP changes and whole-model parameter counts."""

    activation: str
    mode: str
    order: int
    per_expert: bool = False  # one coefficient set per expert instead of one per expert block
    changes: list[MLPChange] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    config_activation_field: str | None = None  # config field naming the MLP activation, if found
    auto_loadable: bool = False  # True: AutoModelForCausalLM.from_pretrained rebuilds it (after import polycom.hf)

    @property
    def num_changed(self) -> int:
        return len(self.changes)

    @property
    def expert_blocks(self) -> list[MLPChange]:
        return [c for c in self.changes if c.num_experts > 0]

    def to_dict(self) -> dict:
        return {**asdict(self), "num_changed": self.num_changed}

    def to_markdown(self) -> str:
        """The full report: a Markdown table with one row per changed MLP or expert block, then the totals."""
        lines = [
            self._title(),
            "",
            "| module | structure | experts | was | action | hidden before -> after | params before -> after |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in self.changes:
            experts = _experts(c) or "-"
            lines.append(
                f"| {c.name} | {c.kind} | {experts} | {c.old_activation} | {c.action} | "
                f"{c.hidden_before} -> {c.hidden_after} | {c.params_before:,} -> {c.params_after:,} |"
            )
        return "\n".join([*lines, "", *self._totals()])

    def to_compact(self, width: int = COMPACT_WIDTH) -> str:
        """The report in lines of at most `width` columns (for narrow terminals and pipes).

        Consecutive MLPs changed the same way (same structure, widths and counts: the usual case, one per
        layer) share one entry ``first to last (N MLPs)``; words are never split or cut short.
        """
        lines = [*wrap(self._title(), width), ""]
        for _, group in groupby(self.changes, key=_same_change):
            same = list(group)
            c = same[0]
            names = c.name if len(same) == 1 else f"{c.name} to {same[-1].name} ({len(same)} MLPs)"
            experts = f" ({c.num_experts} experts, {_sets(c.coefficient_sets)})" if c.num_experts else ""
            each = " each" if len(same) > 1 else ""
            lines += wrap(names + ":", width)
            lines += wrap(f"  {c.kind}{experts}, was {c.old_activation}: {c.action}", width)
            lines += wrap(
                f"  hidden {c.hidden_before} -> {c.hidden_after}, params {c.params_before:,} -> "
                f"{c.params_after:,}{each}",
                width,
            )
        return "\n".join(lines + [""] + [w for line in self._totals(split=True) for w in wrap(line, width)])

    def _title(self) -> str:
        return f"PolyCom conversion: activation={self.activation} (order {self.order}), mode={self.mode}"

    def _totals(self, split: bool = False) -> list[str]:
        delta = self.params_after - self.params_before
        blocks = self.expert_blocks
        experts = f" ({len(blocks)} expert blocks, {sum(c.num_experts for c in blocks)} experts)" if blocks else ""
        changed = f"{self.num_changed} MLPs changed{experts}"
        params = f"model parameters {self.params_before:,} -> {self.params_after:,} ({delta:+,})"
        reload = "reload with " + (
            "AutoModelForCausalLM.from_pretrained (after `import polycom.hf`)"
            if self.auto_loadable
            else "polycom.hf.load_converted(path)"
        )
        return [changed, params, reload] if split else [f"{changed}; {params}", reload]


def _experts(c: MLPChange) -> str:
    return f"{c.num_experts} ({c.coefficient_sets} coefficient sets)" if c.num_experts else ""


def _sets(n: int) -> str:
    return f"{n} coefficient set" + ("" if n == 1 else "s")


def _same_change(c: MLPChange) -> tuple:
    """Everything of a change but the module name."""
    return tuple(getattr(c, f.name) for f in fields(c) if f.name != "name")
