"""Recurrent models over images and video as TF1-style Estimator model_fns.

Top level: the three model_fns and the registry of model names. Each sub-package is
one part; imports point down only (tests/test_layout.py checks it):
running's commands -> benchmarks -> running -> serving -> the model_fns and registry ->
legacy -> layers -> input_fns, and below them all `cache`, the folder of everything
cached, and `errors`, the error that means a user's mistake.

  layers/      what the model_fns are built from: sequencing, the recurrent stack,
               backbones, the classification head, in-graph summaries and metrics, and
               the type every hparam is declared with
  legacy/      users' own TF1 model_fns, and TF1 checkpoints converted for warm start
  serving/     serving receivers and signatures, the exporters, predict from a SavedModel
  running/     the commands (cli/), hparams, the Estimator wiring, clusters, progress,
               monitoring hooks, run directories
  benchmarks/  what bin/benchmark measures: serving latency, the input pipeline,
               training against Keras twins, local clusters
"""
