"""Run a function on N local CPU processes (gloo) with a torchrun-like environment, collect results.

Each worker gets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set as torchrun would, so
the code under test goes through `polycom.distributed.init_distributed` exactly as in a real launch.
A worker's return value (picklable) or its exception (type and message) comes back per rank; the
parent kills workers that outlive `timeout_s` so a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class RankResult:
    rank: int
    ok: bool
    value: Any = None
    error_type: str = ""
    error: str = ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    fn: Callable, rank: int, world_size: int, port: int, args: tuple, out: mp.Queue, env: dict[str, str]
) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    os.environ.update(env)
    import torch

    torch.set_num_threads(1)
    try:
        value = fn(rank, world_size, *args)
        # Serialise tensors to bytes: torch's shared-memory pickling would not outlive this process.
        buf = io.BytesIO()
        torch.save(value, buf)
        out.put(RankResult(rank, True, buf.getvalue()))
    except BaseException as exc:  # report every failure, including SystemExit
        out.put(RankResult(rank, False, error_type=type(exc).__name__, error=f"{exc}\n{traceback.format_exc()}"))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(
    fn: Callable, world_size: int, *args: Any, timeout_s: float = 60.0, env: dict[str, str] | None = None
) -> list[RankResult]:
    """Run fn(rank, world_size, *args) on world_size spawned processes; results sorted by rank.

    env: extra environment for the workers, e.g. {"WORLD_SIZE": "2"} with one process to play a
    rank whose peers never arrive."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(fn, r, world_size, port, args, out, env or {})) for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, RankResult] = {}
    deadline = time.monotonic() + timeout_s
    while len(results) < world_size and time.monotonic() < deadline:
        try:
            res = out.get(timeout=0.5)
            results[res.rank] = res
        except queue.Empty:
            if all(not p.is_alive() for p in procs) and out.empty():
                break
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()) + 5)
        if p.is_alive():
            p.kill()
            p.join()
    for r in range(world_size):
        if r not in results:
            results[r] = RankResult(r, False, error_type="Hang", error=f"rank {r} gave no result within {timeout_s} s")
    return [results[r] for r in range(world_size)]


def values(results: list[RankResult]) -> list[Any]:
    """The ranks' return values; raise AssertionError with every failing rank's traceback."""
    failed = [r for r in results if not r.ok]
    if failed:
        raise AssertionError("\n".join(f"rank {r.rank}: {r.error_type}: {r.error}" for r in failed))
    import torch

    return [torch.load(io.BytesIO(r.value), weights_only=False) for r in results]
