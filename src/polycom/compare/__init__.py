"""`polycom compare`: train one LM per activation on the same data and report how they compare.

from polycom.compare import CompareConfig, run_compare
results = run_compare(CompareConfig(out="runs/cmp", activations=["swiglu", "polynorm"], steps=100))
"""

from polycom.compare.config import BASELINE, CompareConfig
from polycom.compare.layout import run_name
from polycom.compare.recipe import build_run_config, load_recipe, recipe_path
from polycom.compare.report import collect_results, render_markdown, welch_p_value, write_report
from polycom.compare.runner import run_compare

__all__ = [
    "BASELINE",
    "CompareConfig",
    "build_run_config",
    "collect_results",
    "load_recipe",
    "recipe_path",
    "render_markdown",
    "run_compare",
    "run_name",
    "welch_p_value",
    "write_report",
]
