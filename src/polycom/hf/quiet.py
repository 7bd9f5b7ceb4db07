"""Keep transformers' progress bars and chatter out of polycom's commands, for one block of code.

``polycom export`` / ``polycom convert`` load and save small folders in a second or two; transformers'
"Loading weights" / "Writing model shards" bars there only bury the command's own output. Inside
`quiet_transformers` its progress bars (and huggingface_hub's) are off and, when `level` is given, its
log level is raised to it; both are restored on exit. Errors always propagate as exceptions.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_transformers(level: int | None = None) -> Iterator[None]:
    """No transformers / huggingface_hub progress bars inside the block; log level `level` (None: unchanged).

    Raise the level only around steps whose messages polycom checks itself (e.g. reloading its own export,
    whose logits are compared): a user's model loading keeps transformers' warnings (missing or unexpected
    weights) visible.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hub_bars_were_off = are_progress_bars_disabled()
    old_level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if level is not None:
        hf_logging.set_verbosity(max(level, old_level))
    try:
        yield
    finally:
        if level is not None:
            hf_logging.set_verbosity(old_level)
        # transformers' switch turns huggingface_hub's bars on/off too: restore each one's own state
        with warnings.catch_warnings():  # hub bars held off by HF_HUB_DISABLE_PROGRESS_BARS warn when enabled
            warnings.simplefilter("ignore")
            if bars_were_on:
                hf_logging.enable_progress_bar()
            (disable_progress_bars if hub_bars_were_off else enable_progress_bars)()
