"""Command-line overrides for the smallest model the CLI tests train (importable from every test folder:
tests/ is on sys.path through tests/conftest.py)."""

TINY_MODEL = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.max_seq_len=32"]
TINY_RUN = [*TINY_MODEL, "--train.batch_size=4"]  # the model above on 4 sequences per step
