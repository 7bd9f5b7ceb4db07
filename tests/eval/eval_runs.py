"""Run folders for the eval tests, written in the documented layout without the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polycom.data import ByteTokenizer
from polycom.models import ModelConfig, build_model
from polycom.train.checkpoint import save_checkpoint

TEXT = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
    "To be, or not to be, that is the question.\n"
)


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, max_seq_len=128, activation="polynorm")
    return ModelConfig(**{**base, **kw})


def write_run(folder: Path, model, tokenizer=None, step: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model": model.config.to_dict()}))
    (tokenizer or ByteTokenizer()).save(folder / "tokenizer")
    save_checkpoint(folder, step, {"model": model.state_dict()})
    return folder


def fake_run(folder: Path, seed: int = 0, **kw) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(seed)
    model = build_model(tiny_config(**kw)).eval()
    return write_run(folder, model), model


def train_tiny(model, text: str, steps: int = 40, seq_len: int = 64, lr: float = 3e-3) -> list[float]:
    """A few AdamW steps of next-byte prediction on `text` (random windows); returns the losses."""
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (8,), generator=g)
        x = torch.stack([data[s : s + seq_len] for s in starts])
        y = torch.stack([data[s + 1 : s + seq_len + 1] for s in starts])
        loss = model(x, y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and on a shared 2-core box 2 threads can be 10-100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
