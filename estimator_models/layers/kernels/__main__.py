"""`python -m estimator_models.layers.kernels`: builds the kernels for this machine (make does)."""

from estimator_models.layers import kernels

# Not fatal where they cannot be had: Keras' layers still run every model, only slower,
# and available() has said why.
if kernels.available():
    print(f'fused LSTM kernel: {kernels.library_path()}')
