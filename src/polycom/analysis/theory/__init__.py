"""Theory checks on small nets: approximation rates (`approx`, with `targets`, `fcnet`, `stats`) and
exact PolyReLU representations of ReLU / ReLU^2 nets (`represent`). Submodules are imported on use."""
