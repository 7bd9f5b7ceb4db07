"""`polycom compare`: train one LM per activation on the same data and report how they compare.

from polycom.compare import CompareConfig, run_compare
results = run_compare(CompareConfig(out="runs/cmp", activations=["swiglu", "polynorm"], steps=100))
"""

from polycom.compare.report import collect_results, render_markdown, welch_p_value, write_report
from polycom.compare.runner import CPU_RECIPE, DEFAULT_ACTIVATIONS, GPU_RECIPE, CompareConfig, Recipe, run_compare

__all__ = [
    "CPU_RECIPE",
    "DEFAULT_ACTIVATIONS",
    "GPU_RECIPE",
    "CompareConfig",
    "Recipe",
    "collect_results",
    "render_markdown",
    "run_compare",
    "welch_p_value",
    "write_report",
]
