"""Performance benchmarks behind `polycom bench` (importable from an installed wheel).

- `polycom.bench.ops`: op-level kernel benchmark (`polycom bench ops`): correctness check, then
  times, effective bandwidth and memory per (shape, dtype, op, provider, mode).
  Cases and providers are registries in `op_cases` / `op_providers`; the accuracy rule is in
  `op_check`; `ops_report` prints and summarises rows; `ops_static` compiles the kernels for sm_90.
- `polycom.bench.model`: training-step benchmark of the LM per activation (`polycom bench model`).
- `polycom.bench.timing`: repetition timer and quantiles; `polycom.bench.rows`: the one result-row
  writer (provenance fields, JSON lines + CSV, appended atomically).
"""
