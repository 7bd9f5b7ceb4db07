"""Training harness: typed run config, the training loop, checkpoints, metrics and run headers.

from polycom.train import load_config, train
cfg = load_config(preset="tiny", overrides=["--model.activation=polynorm", "--train.steps=300"])
result = train(cfg, "runs/polynorm")
"""

from polycom.train.checkpoint import is_run_folder, load_checkpoint, load_run, save_checkpoint
from polycom.train.config import DataConfig, LoopConfig, OptimConfig, TrainConfig, load_config
from polycom.train.data_setup import resolve_data
from polycom.train.run_files import load_resume_config
from polycom.train.schedule import WarmupCosine
from polycom.train.trainer import Trainer, TrainResult, train

__all__ = [
    "DataConfig",
    "LoopConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "WarmupCosine",
    "is_run_folder",
    "load_checkpoint",
    "load_config",
    "load_resume_config",
    "load_run",
    "resolve_data",
    "save_checkpoint",
    "train",
]
