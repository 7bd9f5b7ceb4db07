"""polycom inside torchtitan: PolyCom FFNs and MoE experts on torchtitan's FSDP2 / TP / PP / CP / EP stack.

Install with ``pip install "polycom[torchtitan]"`` (torchtitan 0.3.0; importing this package with another
version raises `TorchtitanVersionError` naming the one to install). Two ways in, one code path:

* ``--override.imports`` factories on any torchtitan model that uses the stock layers:
  `polycom_feed_forward` (``FeedForward``) and `polycom_grouped_experts` (``GroupedExperts``), with kwargs
  ``activation`` (``polynorm``, ``polynorm:order=2``, ...), ``mode`` (``ungated`` / ``replace``) and, for
  experts, ``shared_coefficients``; `feed_forward_override` limits one to some layers by FQN glob;
* ``--module polycom.integrations.torchtitan --config NAME``: the configs of `config_registry` (debug
  models, the paper's dense 1B and MoE 1B-7B recipes), which activate the same factories.

`export` turns a torchtitan checkpoint of such a model into a polycom Hugging Face folder. See
docs/torchtitan.md.
"""

from polycom.integrations.torchtitan.version import SUPPORTED_TORCHTITAN, TorchtitanVersionError, check_torchtitan

check_torchtitan()

from polycom.integrations.torchtitan.activation import PolyComActivation  # noqa: E402
from polycom.integrations.torchtitan.experts import (  # noqa: E402
    PolyComGroupedExperts,
    polycom_grouped_experts,
    polycom_grouped_experts_config,
)
from polycom.integrations.torchtitan.feed_forward import (  # noqa: E402
    PolyComFeedForward,
    feed_forward_override,
    polycom_feed_forward,
    polycom_feed_forward_config,
)

__all__ = [
    "SUPPORTED_TORCHTITAN",
    "PolyComActivation",
    "PolyComFeedForward",
    "PolyComGroupedExperts",
    "TorchtitanVersionError",
    "check_torchtitan",
    "feed_forward_override",
    "polycom_feed_forward",
    "polycom_feed_forward_config",
    "polycom_grouped_experts",
    "polycom_grouped_experts_config",
]
