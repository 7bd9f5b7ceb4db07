"""Theory checks and trained-model analyses (`polycom analyze`; see docs/analysis.md).

* `polycom.analysis.approx`: empirical approximation rates of fully connected nets per activation
  (targets of known smoothness in `targets`, nets in `fcnet`, slope fits in `stats`).
* `polycom.analysis.represent`: ReLU / ReLU^2 nets as PolyReLU nets (exact), and Yarotsky's sawtooth
  ReLU nets for x^2 and x^3 (size vs log(1/eps)).
* `polycom.analysis.model_analysis` / `model_report`: effective rank of MLP weights, layer-wise
  hidden-state similarity, PolyCom coefficients, activation distributions of trained LMs.

Submodules are imported on use (matplotlib and scipy load only when a report is written).
"""

from polycom.analysis.model_analysis import analyze_model, cosine_similarity_matrix, effective_rank, find_mlp_blocks
from polycom.analysis.represent import to_polyrelu, verify_representation
from polycom.analysis.targets import get_target, target_names

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
