"""Training-step benchmark of the LM per activation; same options as `polycom bench model`.

    python benchmarks/bench_model.py --quick          # anchor config on a GPU, ~1-2 minutes
    python benchmarks/bench_model.py --help

Rows are appended to benchmarks/results/bench_model.jsonl (card, versions, commit, date, numbers).
"""

import sys

from polycom.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "model", *sys.argv[1:]]))
