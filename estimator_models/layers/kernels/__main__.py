"""`python -m estimator_models.layers.kernels`: builds the kernels for this machine (make does)."""

import sys

from estimator_models.layers import kernels

try:
    kernels.load()
    print(f'fused LSTM kernel: {kernels.library_path()}')
except kernels.KernelUnavailable as error:
    # Not fatal: Keras' layers still run every model, only slower.
    print(f'warning: {error}; rnn_implementation=auto will use Keras layers', file=sys.stderr)
