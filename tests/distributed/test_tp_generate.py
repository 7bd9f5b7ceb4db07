"""`generate` (KV cache) on a tensor-parallel model (2 gloo processes) equals generate on one process."""

from __future__ import annotations

import pytest
import torch
from dist_harness import run_workers, values

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

MODEL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=24, activation="polynorm_glu")


def tp_generate_worker(rank: int, world_size: int, seed: int) -> dict:
    """Same weights on every rank; the model is sharded tp = world_size ways, then generates greedily and sampled."""
    from polycom.distributed import ParallelConfig, init_distributed, parallelize
    from polycom.models import ModelConfig, build_model

    ctx = init_distributed(ParallelConfig(tp=world_size, timeout_s=60))
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_dict(MODEL))
    model = parallelize(model, ParallelConfig(tp=world_size, timeout_s=60), ctx)
    prompt = torch.tensor([[3, 14, 15, 9, 2], [6, 5, 3, 5, 8]])
    greedy = model.generate(prompt, 10, temperature=0)
    sampled = model.generate(prompt, 10, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(1))
    return {"greedy": greedy, "sampled": sampled, "local_kv_heads": model.layers[0].attn.n_kv_heads}


def test_tensor_parallel_generate_equals_one_process():
    from polycom.models import ModelConfig, build_model

    torch.manual_seed(1234)
    model = build_model(ModelConfig.from_dict(MODEL))
    prompt = torch.tensor([[3, 14, 15, 9, 2], [6, 5, 3, 5, 8]])
    greedy = model.generate(prompt, 10, temperature=0)
    sampled = model.generate(prompt, 10, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(1))
    for res in values(run_workers(tp_generate_worker, 2, 1234, timeout_s=180)):
        assert res["local_kv_heads"] == 1  # 2 kv heads split over 2 ranks: the cache holds the local one
        assert torch.equal(res["greedy"], greedy)
        assert torch.equal(res["sampled"], sampled)
