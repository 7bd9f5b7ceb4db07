"""The torchtitan release this integration is written against, and the check that runs on import.

torchtitan changes its extension points between releases (its TOML configs became Python functions, its
override mechanism and Module protocol are recent), so the integration names the one version it was
built and tested with and refuses others with an error that says which to install.
"""

from __future__ import annotations

import importlib
import importlib.metadata

SUPPORTED_TORCHTITAN = "0.3.0"
INSTALL_HINT = f'pip install "polycom[torchtitan]" (torchtitan=={SUPPORTED_TORCHTITAN})'

# (module, attribute path) pairs the integration builds on; each must exist in the installed torchtitan.
REQUIRED_TARGETS = (
    ("torchtitan.config.override", "override"),
    ("torchtitan.config.override", "derive"),
    ("torchtitan.protocols.module", "Module"),
    ("torchtitan.protocols.sharding", "ShardingConfig"),
    ("torchtitan.models.common.feed_forward", "FeedForward.Config"),
    ("torchtitan.models.common.moe", "GroupedExperts.Config"),
    ("torchtitan.models.common.decoder_sharding", "dense_param_placement"),
    ("torchtitan.models.common.moe_sharding", "expert_param_placement_sparse"),
)


class TorchtitanVersionError(ImportError):
    """torchtitan is missing, of another version, or lacks an extension point the integration needs."""


def installed_torchtitan_version() -> str | None:
    """The installed torchtitan distribution's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("torchtitan")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_torchtitan() -> str:
    """Return the installed torchtitan version; raise `TorchtitanVersionError` unless it is the supported one
    and every override target in `REQUIRED_TARGETS` is importable."""
    version = installed_torchtitan_version()
    if version is None:
        raise TorchtitanVersionError(f"polycom.integrations.torchtitan needs torchtitan: {INSTALL_HINT}")
    if version != SUPPORTED_TORCHTITAN:
        raise TorchtitanVersionError(
            f"polycom.integrations.torchtitan supports torchtitan {SUPPORTED_TORCHTITAN} only, found {version}: "
            f"{INSTALL_HINT}"
        )
    missing = [f"{module}.{path}" for module, path in REQUIRED_TARGETS if not _resolves(module, path)]
    if missing:
        raise TorchtitanVersionError(
            f"the installed torchtitan {version} lacks what polycom overrides: {', '.join(missing)}; "
            f"reinstall it with {INSTALL_HINT}"
        )
    return version


def _resolves(module: str, path: str) -> bool:
    try:
        obj = importlib.import_module(module)
    except ImportError:
        return False
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return True
