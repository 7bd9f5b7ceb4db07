"""`python benchmarks/bench_model.py ARGS` = `polycom bench model ARGS` (engine: polycom.bench.model)."""

import sys

from polycom.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "model", *sys.argv[1:]]))
