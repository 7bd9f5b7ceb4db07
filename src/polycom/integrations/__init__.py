"""Integrations with outside training engines (the top layer: nothing else in polycom imports it).

* `polycom.integrations.torchtitan`: PolyCom FFNs and MoE experts for torchtitan (``pip install
  "polycom[torchtitan]"``), as ``--override.imports`` factories and as a ``--module`` config registry.
"""
