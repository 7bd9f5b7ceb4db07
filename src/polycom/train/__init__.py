"""Training harness: typed run config, the training loop, checkpoints, metrics and run headers.

from polycom.train import load_config, train
cfg = load_config(preset="tiny", overrides=["--model.activation=polynorm", "--train.steps=300"])
result = train(cfg, "runs/polynorm")
"""

from polycom.train.checkpoint import load_checkpoint, load_run_model, save_checkpoint
from polycom.train.config import DataConfig, LoopConfig, OptimConfig, TrainConfig, load_config
from polycom.train.schedule import WarmupCosine
from polycom.train.trainer import TrainResult, load_resume_config, resolve_data, train

__all__ = [
    "DataConfig",
    "LoopConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "WarmupCosine",
    "load_checkpoint",
    "load_config",
    "load_resume_config",
    "load_run_model",
    "resolve_data",
    "save_checkpoint",
    "train",
]
