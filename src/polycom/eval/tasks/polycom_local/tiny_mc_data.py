"""Loader of the shipped `polycom_tiny_mc` task: the jsonl next to this file as a `datasets.DatasetDict`."""

from __future__ import annotations

import json
from pathlib import Path

DATA_FILE = Path(__file__).with_name("polycom_tiny_mc.jsonl")


def load(**_ignored) -> dict:
    """{"test": Dataset} with fields question (str), choices (list[str]), label (int)."""
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in DATA_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return DatasetDict({"test": Dataset.from_list(rows)})
