"""The torchtitan version check, ``--module polycom.integrations.torchtitan --config NAME`` resolution through
torchtitan's own ConfigManager, and the rule that only ``polycom.integrations`` imports torchtitan."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shlex
from pathlib import Path

import pytest
import torchtitan.models.common.moe
from torchtitan.config.manager import ConfigManager

from polycom.integrations.torchtitan import version
from polycom.integrations.torchtitan.models import FFN_OVERRIDE
from polycom.integrations.torchtitan.recipes import config_names
from polycom.integrations.torchtitan.version import (
    REQUIRED_TARGETS,
    SUPPORTED_TORCHTITAN,
    TorchtitanVersionError,
    check_torchtitan,
    installed_torchtitan_version,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "polycom"


def fake_version(monkeypatch, result):
    real = importlib.metadata.version

    def version_of(name):
        if name != "torchtitan":
            return real(name)
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(importlib.metadata, "version", version_of)


def test_installed_version_is_supported():
    assert SUPPORTED_TORCHTITAN == "0.3.0"
    assert installed_torchtitan_version() == "0.3.0"
    assert check_torchtitan() == "0.3.0"


def test_other_version_is_refused(monkeypatch):
    fake_version(monkeypatch, "0.2.2")
    assert installed_torchtitan_version() == "0.2.2"
    with pytest.raises(TorchtitanVersionError) as err:
        check_torchtitan()
    message = str(err.value)
    assert "0.3.0" in message and "0.2.2" in message
    assert 'pip install "polycom[torchtitan]"' in message and "torchtitan==0.3.0" in message
    assert isinstance(err.value, ImportError)


def test_missing_torchtitan_is_refused(monkeypatch):
    fake_version(monkeypatch, importlib.metadata.PackageNotFoundError("torchtitan"))
    assert installed_torchtitan_version() is None
    with pytest.raises(TorchtitanVersionError, match=re.escape('pip install "polycom[torchtitan]"')):
        check_torchtitan()


def test_missing_override_target_is_refused(monkeypatch):
    assert ("torchtitan.models.common.moe", "GroupedExperts.Config") in REQUIRED_TARGETS
    monkeypatch.delattr(torchtitan.models.common.moe, "GroupedExperts")
    with pytest.raises(TorchtitanVersionError) as err:
        check_torchtitan()
    message = str(err.value)
    assert "torchtitan.models.common.moe.GroupedExperts.Config" in message
    assert "FeedForward" not in message  # only what is missing is named
    assert "torchtitan==0.3.0" in message


def test_every_required_target_resolves_today():
    for module, path in REQUIRED_TARGETS:
        obj = importlib.import_module(module)
        for part in path.split("."):
            obj = getattr(obj, part)


def test_package_import_runs_the_check(monkeypatch):
    """Importing the package with another torchtitan raises (the check runs at import, not on first use)."""
    import polycom.integrations.torchtitan as package

    fake_version(monkeypatch, "0.2.2")
    with pytest.raises(TorchtitanVersionError, match="0.2.2"):
        importlib.reload(package)
    monkeypatch.undo()
    importlib.reload(package)
    assert package.check_torchtitan is version.check_torchtitan


def test_config_manager_resolves_the_module_and_applies_cli():
    cfg = ConfigManager().parse_args(
        ["--module", "polycom.integrations.torchtitan", "--config", "polycom_debug_polynorm", "--training.steps", "3"]
    )
    assert cfg.training.steps == 3
    assert cfg.training.global_batch_size == 8  # untouched registry values survive
    assert [imp[0] for imp in cfg.override.imports] == [FFN_OVERRIDE]
    assert cfg.override.imports[0][1] == {"activation": "polynorm:order=3"}


@pytest.mark.parametrize("name", config_names())
def test_config_manager_loads_every_registry_config(name):
    cfg = ConfigManager().parse_args(["--module", "polycom.integrations.torchtitan", "--config", name])
    assert cfg.model_spec.name == "polycom"
    assert bool(cfg.override.imports) == (not name.endswith("_swiglu"))


@pytest.mark.parametrize("name", config_names())
def test_cuda_graphs_off_for_moe_so_expert_parallel_parses(name):
    """torchtitan captures each step in a CUDA graph by default and refuses that with expert parallelism over its
    all-to-all (host-read split sizes): the MoE configs turn capture off, as torchtitan's own MoE configs do."""
    moe = "_moe_" in name
    cfg = ConfigManager().parse_args(["--module", "polycom.integrations.torchtitan", "--config", name])
    assert cfg.training.disable_cuda_graphs == moe
    if moe:
        args = ["--module", "polycom.integrations.torchtitan", "--config", name]
        cfg = ConfigManager().parse_args([*args, "--parallelism.expert_parallel_degree", "8"])
        assert cfg.parallelism.expert_parallel_degree == 8


@pytest.mark.parametrize("name", config_names())
def test_configs_for_several_ranks_take_the_backend_fsdp_accepts(name):
    """The paper configs (written for 8 data-parallel ranks) shard with FSDP2, which with torch 2.13 needs the
    partial_dtensor backend; the one-GPU debug configs keep torchtitan's default."""
    cfg = ConfigManager().parse_args(["--module", "polycom.integrations.torchtitan", "--config", name])
    assert cfg.parallelism.spmd_backend == ("partial_dtensor" if name.startswith("polycom_paper_") else "spmd_types")


def _doc_training_commands() -> list[list[str]]:
    """The arguments after ``-m torchtitan.train`` of every command in docs/torchtitan.md's code blocks."""
    text = (SRC.parents[1] / "docs" / "torchtitan.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)  # backslash line continuations
        for line in joined.splitlines():
            if "-m torchtitan.train" in line and not line.lstrip().startswith("#"):
                args = shlex.split(line.split("-m torchtitan.train", 1)[1])
                commands.append([a for a in args if a != "..."])
    return commands


def test_the_docs_training_commands_parse():
    """Every torchtitan command in docs/torchtitan.md is accepted by torchtitan's own ConfigManager (flags, the
    registry names, override targets, and torchtitan's checks such as CUDA graphs with expert parallelism)."""
    commands = _doc_training_commands()
    assert len(commands) >= 5  # the override, smoke, dense (PolyNorm and SwiGLU) and MoE commands
    for args in commands:
        cfg = ConfigManager().parse_args(args)
        if "--parallelism.spmd_backend" in args:
            assert cfg.parallelism.spmd_backend == args[args.index("--parallelism.spmd_backend") + 1]


def test_config_manager_names_an_unknown_config():
    with pytest.raises(ValueError, match="polycom_debug_nope"):
        ConfigManager().parse_args(["--module", "polycom.integrations.torchtitan", "--config", "polycom_debug_nope"])


def test_only_integrations_import_torchtitan():
    importing = re.compile(r"^\s*(import torchtitan|from torchtitan[\s.])", re.MULTILINE)
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "integrations" not in path.relative_to(SRC).parts and importing.search(path.read_text())
    ]
    assert offenders == []
    assert importing.search((SRC / "integrations" / "torchtitan" / "models.py").read_text())  # the regex works


def test_config_registry_offers_exactly_the_registry_configs():
    """torchtitan offers every public lower-case callable of the module as a --config: only configs may be there."""
    from polycom.integrations.torchtitan import config_registry

    offered = {
        n
        for n in dir(config_registry)
        if not n.startswith("_") and n[0].islower() and callable(getattr(config_registry, n))
    }
    assert offered == set(config_names())
