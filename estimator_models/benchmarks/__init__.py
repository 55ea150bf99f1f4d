"""What bin/benchmark measures, kept apart from what runs a model: these modules use
estimator_models.running, and only the command (running/cli/benchmark.py) imports them.

  latency         the serving latency of an exported SavedModel (and of its ONNX export)
  input_pipeline  the training input pipeline's rate alone, and data for the memory benchmark
  training        the project's Estimator against a Keras twin of the same model
  keras_twins     those twins, and the work of a training example through one
  clusters        training examples/s in local clusters of three shapes
"""
