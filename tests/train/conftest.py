"""Shared fixtures of the training tests."""

import pytest

from polycom.data import PrepareConfig, embedded_corpus_text, prepare_data


@pytest.fixture(scope="module")
def data_dir(request, tmp_path_factory):
    """A prepared byte-level data folder from the start of the embedded corpus.

    Its size is the module's ``DATA_CHARS`` (default 100,000 characters), so each test module keeps the
    data its loss thresholds were written for.
    """
    folder = tmp_path_factory.mktemp("data")
    src = folder / "text.txt"
    src.write_text(embedded_corpus_text()[: getattr(request.module, "DATA_CHARS", 100_000)])
    prepare_data(PrepareConfig(source=str(src)), folder / "shards", show_progress=False)
    return folder / "shards"
