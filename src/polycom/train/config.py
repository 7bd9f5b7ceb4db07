"""Typed run configuration: `TrainConfig` with sections [model], [data], [optim], [train], [parallel].

Resolution order (later wins): defaults -> model preset (``preset = "tiny"`` in the TOML or ``--preset``)
-> TOML file -> ``--section.key=value`` overrides. Override values are parsed as TOML values
(``--optim.lr=1e-3``, ``--train.compile=true``, ``--model.activation=polynorm``; a value that is not valid
TOML is taken as a string). An unknown section or key is an error listing the valid ones.

Example ``run.toml``::

    preset = "tiny"
    [model]
    activation = "polynorm"
    [train]
    steps = 600
    batch_size = 16
    [optim]
    lr = 3e-3
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from polycom.distributed.config import ParallelConfig
from polycom.errors import UserError, did_you_mean
from polycom.models import ModelConfig, MoEConfig, get_preset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class DataConfig:
    """Where the tokens come from.

    path: a prepared-data folder (`polycom data prepare`); when empty, `source` is prepared on first use
        into ``<cache_dir>/<source>-<tokenizer>`` (cache_dir empty -> ``~/.cache/polycom/data``).
    source: "embedded" (the packaged Shakespeare corpus), a .txt/.jsonl/.parquet file or folder, or hf:NAME.
    tokenizer: "byte", "bpe" or a local tokenizer folder (used only when preparing).
    bpe_vocab_size: vocab of a BPE trained while preparing.
    val_fraction: share of the tokens held out for validation (when preparing).
    text_errors: invalid UTF-8 in .txt/.jsonl sources (when preparing): "strict" refuses the file,
        "replace" substitutes U+FFFD.
    held_out: extra validation sets, ``["NAME=FOLDER", ...]``: the validation split of each prepared-data
        folder (same tokenizer) is evaluated with the main one and logged as ``val_loss_sets[NAME]``.
    """

    path: str = ""
    source: str = "embedded"
    tokenizer: str = "byte"
    bpe_vocab_size: int = 4096
    val_fraction: float = 0.05
    cache_dir: str = ""
    text_errors: str = "strict"
    held_out: list[str] = field(default_factory=list)


@dataclass
class OptimConfig:
    """AdamW + linear warmup + cosine decay to ``lr * min_lr_ratio``.

    Weight decay applies to matrices (embeddings included) only: never to 1-D parameters (norm gains,
    biases) nor to the PolyCom coefficients. ``warmup_steps`` counts optimizer steps.
    decay_vectors: also decay the 1-D parameters (norm gains, biases), as OLMoE does; the PolyCom
        coefficients are never decayed.
    schedule_steps: length of the warmup + cosine schedule in optimizer steps; 0 -> train.steps. A longer
        schedule than the run (OLMoE's t_max) leaves the rate near its peak at the end of the run.
    """

    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    decay_vectors: bool = False
    schedule_steps: int = 0


@dataclass
class LoopConfig:
    """The [train] section: steps, batches, evaluation, checkpoints, precision.

    steps: optimizer steps. batch_size: sequences per micro-batch per data-parallel rank.
    grad_accum: micro-batches per optimizer step. seq_len: 0 -> model.max_seq_len.
    seed: model init and data order (two runs with the same seed see the same batches).
    eval_interval / eval_batches: validation loss every N steps (and at step 0 and the end) on a fixed set.
    eval_seed: seed that picks the validation windows; -1 -> seed + 1_000_003 (a different set per seed);
        >= 0 -> the same set for every seed (what a multi-seed comparison wants).
    eval_dense_from / eval_dense_interval: from step `eval_dense_from` on (0 = off) also evaluate every
        `eval_dense_interval` steps, for a finer validation curve near the end of training.
    log_interval: steps per metrics.jsonl record.
    checkpoint_interval: steps between checkpoints (0 -> only at the end; Ctrl-C / SIGTERM also save one).
    keep_checkpoints: newest checkpoints kept (0 = keep all).
    max_bad_steps: consecutive optimizer steps with a non-finite loss or gradient norm that are skipped
        (parameters and optimizer state untouched; counted in metrics.jsonl) before the run stops with an
        error; 0 = stop at the first one. Non-finite parameters are never saved.
    precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16".
    compile: wrap the model in torch.compile. device: "auto", "cpu", "cuda", "cuda:1", ...
    threads: torch CPU threads: -1 = adaptive between the default and 1 (the default: fast when other processes
        share the cores; not bit-reproducible), 0 = torch default, N > 0 = N; the environment variable
        POLYCOM_THREADS overrides it (the one thread policy of every command: polycom.train.threads).
    """

    steps: int = 600
    batch_size: int = 16
    grad_accum: int = 1
    seq_len: int = 0
    seed: int = 0
    eval_interval: int = 100
    eval_batches: int = 8
    eval_seed: int = -1
    eval_dense_from: int = 0
    eval_dense_interval: int = 0
    log_interval: int = 10
    checkpoint_interval: int = 200
    keep_checkpoints: int = 2
    max_bad_steps: int = 10
    precision: str = "auto"
    compile: bool = False
    device: str = "auto"
    threads: int = -1


@dataclass
class TrainConfig:
    """A whole run. ``preset`` names the model preset the [model] section started from (informational)."""

    model: ModelConfig = field(default_factory=lambda: get_preset("tiny"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    preset: str = "tiny"

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_seq_len

    def validate(self) -> None:
        t, o = self.train, self.optim
        for name in ("steps", "batch_size", "grad_accum", "eval_batches", "log_interval"):
            if getattr(t, name) < 1:
                raise UserError(f"train.{name} must be >= 1, got {getattr(t, name)}")
        for name in ("eval_interval", "checkpoint_interval", "keep_checkpoints", "seq_len", "eval_dense_from"):
            if getattr(t, name) < 0:
                raise UserError(f"train.{name} must be >= 0, got {getattr(t, name)}")
        if t.max_bad_steps < 0:
            raise UserError(f"train.max_bad_steps must be >= 0, got {t.max_bad_steps}")
        if t.eval_seed < -1 or t.eval_dense_interval < 0 or (t.eval_dense_from > 0 and t.eval_dense_interval < 1):
            raise UserError(
                "train.eval_seed must be >= -1 and train.eval_dense_interval >= 1 when train.eval_dense_from > 0, "
                f"got eval_seed={t.eval_seed}, eval_dense_from={t.eval_dense_from}, "
                f"eval_dense_interval={t.eval_dense_interval}"
            )
        if t.threads < -1:
            raise UserError(f"train.threads must be -1 (adaptive), 0 (torch default) or > 0, got {t.threads}")
        if self.seq_len > self.model.max_seq_len:
            raise UserError(f"train.seq_len {self.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}")
        if t.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"train.precision must be auto, fp32 or bf16, got {t.precision!r}")
        for name, value in dataclasses.asdict(o).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"optim.{name} must be a finite number, got {value}")
        if not isinstance(self.data.held_out, list) or any(
            not isinstance(h, str) or not h.partition("=")[0] or not h.partition("=")[2] for h in self.data.held_out
        ):
            raise UserError(f'data.held_out must be a list of "NAME=FOLDER" strings, got {self.data.held_out!r}')
        if o.schedule_steps < 0:
            raise UserError(f"optim.schedule_steps must be >= 0 (0 = train.steps), got {o.schedule_steps}")
        if o.lr <= 0 or not 0 <= o.min_lr_ratio <= 1 or o.warmup_steps < 0 or o.grad_clip < 0:
            raise UserError("optim: need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0, grad_clip >= 0")
        if not 0 < self.data.val_fraction < 0.5:
            raise UserError(f"data.val_fraction must be in (0, 0.5), got {self.data.val_fraction}")
        if self.data.text_errors not in ("strict", "replace"):
            raise UserError(f"data.text_errors must be strict or replace, got {self.data.text_errors!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "model": self.model.to_dict(),
            "data": dataclasses.asdict(self.data),
            "optim": dataclasses.asdict(self.optim),
            "train": dataclasses.asdict(self.train),
            "parallel": dataclasses.asdict(self.parallel),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict` (e.g. a run's config.json); unknown keys raise UserError."""
        cfg = cls(model=_model_from_dict(d.get("model", {}), d.get("preset", "tiny")))
        rest = {k: v for k, v in d.items() if k != "model"}
        apply_dict(cfg, rest)
        return cfg


SECTIONS = ("model", "data", "optim", "train", "parallel")


def _model_from_dict(d: dict, preset: str) -> ModelConfig:
    try:
        base = get_preset(preset).to_dict()
        base.update(d)
        return ModelConfig.from_dict(base)
    except ValueError as exc:
        raise UserError(str(exc)) from None


RUN_CONFIGS = Path(__file__).resolve().parent / "run_configs"


def bundled_config(name: str) -> Path:
    """The run config `name` shipped with polycom (``configs/<name>.toml`` in the repository, the same files as
    package data in an installed polycom), e.g. ``paper-1b``; UserError listing the names for an unknown one."""
    path = RUN_CONFIGS / f"{name}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in RUN_CONFIGS.glob("*.toml"))
        raise UserError(f"no bundled run config {name!r}{did_you_mean(name, names)}; available: {', '.join(names)}")
    return path


def load_config(
    path: str | Path | None = None,
    *,
    preset: str | None = None,
    overrides: list[str] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Resolve a TrainConfig: `base` (or defaults) -> preset -> TOML file -> overrides; validated."""
    file_dict: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} not found")
        try:
            file_dict = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    cfg = base if base is not None else TrainConfig()
    preset_name = preset or file_dict.pop("preset", None)
    file_dict.pop("preset", None)
    if preset_name is not None:
        try:
            cfg.model = get_preset(preset_name)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        cfg.preset = preset_name
    apply_dict(cfg, file_dict, where=str(path) if path else "config")
    for item in overrides or []:
        apply_override(cfg, item)
    cfg.validate()
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"--model.d_model=512"`` or ``"model.d_model=512"`` -> (["model", "d_model"], 512)."""
    text = item[2:] if item.startswith("--") else item
    if "=" not in text:
        raise UserError(f"override {item!r} must look like --section.key=value")
    key, raw = text.split("=", 1)
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise UserError(f"override {item!r} must look like --section.key=value (sections: {', '.join(SECTIONS)})")
    return parts, parse_value(raw)


def parse_value(raw: str) -> Any:
    """A TOML value (number, bool, quoted string, array) or, failing that, the raw string."""
    if raw.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_override(cfg: TrainConfig, item: str) -> None:
    parts, value = parse_override(item)
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    apply_dict(cfg, nested, where=f"override {item!r}")


def apply_dict(cfg: TrainConfig, d: dict[str, Any], where: str = "config") -> None:
    """Merge a nested dict of sections into `cfg` in place, checking every key and value type."""
    for section, values in d.items():
        if section == "preset":
            cfg.preset = str(values)
            continue
        if section not in SECTIONS:
            raise UserError(f"{where}: unknown config section {section!r}; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise UserError(f"{where}: [{section}] must be a table of keys, got {values!r}")
        if section == "model":
            merged = cfg.model.to_dict()
            _merge_model(merged, values, where)
            try:
                cfg.model = ModelConfig.from_dict(merged)
            except (ValueError, TypeError) as exc:
                raise UserError(f"{where}: {exc}") from None
        else:
            _merge_dataclass(getattr(cfg, section), values, section, where)


def _merge_model(merged: dict, values: dict, where: str) -> None:
    valid = [f.name for f in fields(ModelConfig)]
    for key, value in values.items():
        if key not in valid:
            raise UserError(f"{where}: unknown key model.{key}; valid keys: {', '.join('model.' + k for k in valid)}")
        if key == "moe" and isinstance(value, dict):
            moe_valid = [f.name for f in fields(MoEConfig)]
            bad = [k for k in value if k not in moe_valid]
            if bad:
                raise UserError(
                    f"{where}: unknown key model.moe.{bad[0]}; valid keys: {', '.join('model.moe.' + k for k in moe_valid)}"
                )
            current = merged.get("moe") or MoEConfig().to_dict()
            current.update(value)
            merged["moe"] = current
        else:
            merged[key] = value


def _merge_dataclass(obj: Any, values: dict, section: str, where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    valid = [f.name for f in fields(obj)]
    for key, value in values.items():
        if key not in valid:
            raise UserError(
                f"{where}: unknown key {section}.{key}; valid keys: {', '.join(f'{section}.{k}' for k in valid)}"
            )
        setattr(obj, key, _coerce(value, hints[key], f"{section}.{key}", where))


def _coerce(value: Any, hint: Any, name: str, where: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        return str(value)
    else:
        return value
    raise UserError(f"{where}: {name} must be of type {hint.__name__}, got {value!r}")
