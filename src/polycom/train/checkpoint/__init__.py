"""Checkpoints of a run and the one loader of a run folder.

    save_checkpoint(run_dir, step, state, keep=3)                         # one process: one .pt file
    save_sharded_checkpoint(run_dir, step, model, opt, extra, ctx, keep=3) # every rank: one DCP folder
    path = find_checkpoint(run_dir, step=None)                            # latest, or the one of `step`
    list_checkpoints(run_dir)                                             # oldest first
    state = load_checkpoint(path)                                         # single file, checksum verified
    extra = load_sharded(path, model, optimizer, ctx)                     # DCP folder, resharded
    run = load_run(run_dir)                                               # model, configs, tokenizer

Backends: `single_file` (atomic ``torch.save`` + sha256), `sharded` (torch.distributed.checkpoint
folder + safetensors export; `integrity` writes and verifies its ``checksums.json``). `layout` names
and finds a run's checkpoints; `run_folder` decides what a run folder is and loads its model.
"""

from polycom.train.checkpoint.layout import (
    checkpoint_dir,
    checkpoint_path,
    clean_stale_temp,
    find_checkpoint,
    list_checkpoints,
    save_checkpoint,
    save_sharded_checkpoint,
)
from polycom.train.checkpoint.run_folder import LoadedRun, is_run_folder, load_run, read_run_config
from polycom.train.checkpoint.sharded import check_global_batch, export_safetensors, load_sharded, save_sharded
from polycom.train.checkpoint.single_file import load_checkpoint, verify_checkpoint

__all__ = [
    "LoadedRun",
    "check_global_batch",
    "checkpoint_dir",
    "checkpoint_path",
    "clean_stale_temp",
    "export_safetensors",
    "find_checkpoint",
    "is_run_folder",
    "list_checkpoints",
    "load_checkpoint",
    "load_run",
    "load_sharded",
    "read_run_config",
    "save_checkpoint",
    "save_sharded",
    "save_sharded_checkpoint",
    "verify_checkpoint",
]
