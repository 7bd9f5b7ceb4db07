"""Analysis of trained language models: per-layer statistics (`model_analysis`), reports over several
runs (`model_report`) and loading a run or Hugging Face folder with its validation tokens (`runs`).
Submodules are imported on use."""
