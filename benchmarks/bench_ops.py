"""`python benchmarks/bench_ops.py ARGS` = `polycom bench ops ARGS` (engine: polycom.bench.ops)."""

import sys

from polycom.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "ops", *sys.argv[1:]]))
