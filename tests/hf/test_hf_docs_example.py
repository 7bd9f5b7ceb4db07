"""The worked example of docs/huggingface.md (convert OLMoE, Trainer, save, reload, evaluate) runs as written."""

from __future__ import annotations

import math
import re
from pathlib import Path

from hf_tiny_models import one_torch_thread_hf  # noqa: F401

DOC = Path(__file__).resolve().parents[2] / "docs" / "huggingface.md"


def _example_blocks() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("### Worked example") :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_worked_example_runs(tmp_path, monkeypatch, capsys):
    blocks = _example_blocks()
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/huggingface.md worked example block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "2 MLPs changed (2 expert blocks, 16 experts)" in out
    bpb = float(re.search(r"bits per byte: ([0-9.]+)", out).group(1))
    assert 0 < bpb < 8 and math.isfinite(bpb)  # a trained byte model: below 8 bits per byte
    assert (tmp_path / "olmoe-polynorm" / "model.safetensors").is_file()
    assert namespace["reloaded"].config.hidden_act == "polynorm"
