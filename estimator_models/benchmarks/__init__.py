"""What bin/benchmark measures, kept apart from what runs a model: these modules use
estimator_models.running, and only the command (running/cli/benchmark.py) imports them.

  latency         the serving latency of an exported SavedModel (and of its ONNX export)
  input_pipeline  the training input pipeline's rate alone, and data for the memory benchmark
  training        the project's Estimator against its peers: twins of the same model in
                  Keras (float32, mixed_bfloat16) and PyTorch (float32, bfloat16 autocast)
  keras_twins     the Keras twins, and the work of a training example through one
  torch_twins     the PyTorch twins, run by path in the PyTorch environment
  torch_environment  that environment (requirements-torch.txt), made once per machine
  step_breakdown  where a training step of the project's model goes, op by op
  clusters        training examples/s in local clusters of three shapes
"""
