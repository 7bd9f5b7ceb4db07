"""Theory checks and trained-model analyses (`polycom analyze`; see docs/analysis.md).

Two subpackages:

* `polycom.analysis.theory`: claims about activations, checked on small nets --
  `approx` (empirical approximation rates of fully connected nets per activation; targets of known
  smoothness in `targets`, nets in `fcnet`, slope fits in `stats`) and `represent` (ReLU / ReLU^2 nets
  as PolyReLU nets, exact, and Yarotsky's sawtooth ReLU nets for x^2 and x^3, size vs log(1/eps)).
* `polycom.analysis.trained`: trained language models -- `model_analysis` (effective rank of MLP
  weights, layer-wise hidden-state similarity, PolyCom coefficients, activation distributions),
  `model_report` (several runs side by side), `runs` (loading a run or Hugging Face folder and its
  validation tokens).

Shared by both: `io` (atomic writes, provenance header) and `plot_style` (Agg backend, colours).
Figures are imported on use (matplotlib and scipy load only when a report is written).
"""

from polycom.analysis.theory.represent import to_polyrelu, verify_representation
from polycom.analysis.theory.targets import get_target, target_names
from polycom.analysis.trained.model_analysis import (
    analyze_model,
    cosine_similarity_matrix,
    effective_rank,
    find_mlp_blocks,
)

__all__ = [
    "analyze_model",
    "cosine_similarity_matrix",
    "effective_rank",
    "find_mlp_blocks",
    "get_target",
    "target_names",
    "to_polyrelu",
    "verify_representation",
]
