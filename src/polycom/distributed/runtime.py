"""Process-group start-up and shutdown, the (dp, tp) device mesh, and the checks done before them.

`init_distributed(cfg)` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Without WORLD_SIZE (or with WORLD_SIZE=1) it returns a single-process context and
starts nothing. Otherwise it validates the layout on every rank BEFORE any collective (so a bad
layout fails everywhere with the same message instead of hanging), starts the process group (NCCL on
GPUs, gloo on CPU) with `cfg.timeout_s` as the timeout of the rendezvous and of every collective,
and builds a 2-D device mesh ("dp", "tp") of shape (world_size // tp, tp). Ranks are laid out
row-major, so the TP group of a rank is tp consecutive ranks (the GPUs of one node when tp divides
the GPUs per node): rank = dp_rank * tp + tp_rank.

When a rank fails, `rank_failure_line(exc)` is the one line the CLI prints for it (``rank 1: UserError:
...``; a rank that lost its peers says so instead of showing the backend's traceback), and
`record_rank_failure(line)` hands that line to torchrun's error file, so torchrun's own failure summary
quotes it instead of "<N/A>".
"""

from __future__ import annotations

import datetime
import json
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from polycom.distributed.config import ParallelConfig
from polycom.errors import UserError

__all__ = [
    "DistContext",
    "init_distributed",
    "launched_rank",
    "rank_failure_line",
    "record_rank_failure",
    "shutdown",
    "validate_layout",
]


@dataclass
class DistContext:
    """Where this process sits in the run. `mesh` is None for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp_rank: int = 0
    dp_size: int = 1
    tp_rank: int = 0
    tp_size: int = 1
    device: torch.device = torch.device("cpu")
    mesh: object | None = None  # torch.distributed.device_mesh.DeviceMesh with dims ("dp", "tp")
    backend: str | None = None
    started_process_group: bool = False  # True when init_distributed started it (shutdown destroys it)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def dp_mesh(self):
        return None if self.mesh is None else self.mesh["dp"]

    @property
    def tp_mesh(self):
        return None if self.mesh is None else self.mesh["tp"]


def _env_int(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def validate_layout(cfg: ParallelConfig, world_size: int) -> None:
    """Check the parallel options against the world size; raise UserError naming the problem."""
    if not isinstance(cfg.tp, int) or isinstance(cfg.tp, bool) or cfg.tp < 1:
        raise UserError(f"parallel.tp must be an integer >= 1, got {cfg.tp!r}")
    if cfg.timeout_s is None or cfg.timeout_s <= 0:
        raise UserError(f"parallel.timeout_s must be > 0 seconds, got {cfg.timeout_s!r}")
    if cfg.tp > 1 and world_size == 1:
        raise UserError(
            f"parallel.tp={cfg.tp} needs {cfg.tp} processes, but this is a single process: "
            f"launch with torchrun --nproc_per_node {cfg.tp} ..."
        )
    if world_size % cfg.tp != 0:
        raise UserError(
            f"world size {world_size} is not divisible by parallel.tp={cfg.tp}: "
            f"launch a multiple of {cfg.tp} processes (e.g. torchrun --nproc_per_node {cfg.tp})"
        )


def _pick_device(local_rank: int) -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible on this node: "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    return torch.device("cpu"), "gloo"


def init_distributed(cfg: ParallelConfig | None = None, *, backend: str | None = None) -> DistContext:
    """Start the process group and device mesh from the torchrun environment (see module docstring).

    backend: force "gloo" or "nccl" (default: nccl when CUDA is available, gloo otherwise).
    Raises UserError on every rank, before any collective, for a bad layout or missing rendezvous.
    """
    cfg = cfg or ParallelConfig()
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    validate_layout(cfg, world_size)

    if world_size == 1:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        return DistContext(device=device)

    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing and not dist.is_initialized():
        raise UserError(
            f"WORLD_SIZE={world_size} but the rendezvous variables {', '.join(missing)} are not set: "
            "launch with torchrun (e.g. torchrun --standalone --nproc_per_node N -m polycom ...)"
        )

    device, default_backend = _pick_device(local_rank)
    backend = backend or default_backend
    started = False
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend=backend,
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(seconds=cfg.timeout_s),
            )
        except (RuntimeError, ValueError, TimeoutError) as exc:  # e.g. rendezvous timed out
            raise UserError(
                f"rank {rank}: could not join the process group at "
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within {cfg.timeout_s} s "
                f"(parallel.timeout_s): {exc}"
            ) from exc
        started = True
    elif dist.get_world_size() != world_size:
        raise UserError(f"a process group of size {dist.get_world_size()} exists but WORLD_SIZE={world_size}")

    from torch.distributed.device_mesh import init_device_mesh

    tp = cfg.tp
    dp = world_size // tp
    mesh = init_device_mesh(device.type, (dp, tp), mesh_dim_names=("dp", "tp"))
    return DistContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        dp_rank=rank // tp,
        dp_size=dp,
        tp_rank=rank % tp,
        tp_size=tp,
        device=device,
        mesh=mesh,
        backend=dist.get_backend(),
        started_process_group=started,
    )


def shutdown(ctx: DistContext | None) -> None:
    """Destroy the process group if `init_distributed` started it; safe to call twice or with None."""
    if ctx is not None and ctx.started_process_group and dist.is_initialized():
        dist.destroy_process_group()
        ctx.started_process_group = False


def launched_rank() -> int | None:
    """This process's rank when launched as one of several (torchrun's WORLD_SIZE > 1), else None."""
    try:
        world_size, rank = int(os.environ.get("WORLD_SIZE") or 1), int(os.environ.get("RANK") or 0)
    except ValueError:
        return None
    return rank if world_size > 1 else None


def _lost_peers(exc: BaseException) -> bool:
    """True for the errors a collective raises when another rank died or stopped (gloo / NCCL / the store)."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        hint in text for hint in ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out")
    )


def rank_failure_line(exc: BaseException, rank: int, *, user_error: bool) -> str:
    """One line naming the rank and the error: ``rank 1: UserError: <message>``.

    user_error: the message is the whole story (a UserError, a bad value); otherwise only its first line is
    kept and the line says how to see the traceback. A rank whose collective failed because another rank died
    says so: the rank that failed first has its own line.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = " ".join(lines) if user_error else (lines[0][:300] if lines else "")
    head = f"rank {rank}: {type(exc).__name__}: {message}"
    if user_error:
        return head
    if _lost_peers(exc):
        return f"{head} (lost contact with the other ranks: one of them failed or was stopped, see its line)"
    return f"{head} (POLYCOM_DEBUG=1 shows the traceback)"


def record_rank_failure(line: str) -> None:
    """Write `line` as this rank's error for torchrun's failure summary (TORCHELASTIC_ERROR_FILE), if set.

    Same JSON as torch.distributed.elastic's ErrorHandler, with the one line in place of the traceback.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
    except OSError:  # the summary then says <N/A>; the line was printed anyway
        pass
