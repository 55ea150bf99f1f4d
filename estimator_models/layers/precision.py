"""Training precision: bfloat16 arithmetic where the CPU has instructions for it.

`precision=mixed_bfloat16` runs a training graph's convolutions (small_cnn) and the fused
LSTM's input projection, per-step recurrent products and the product that gives both
kernels' gradients in bfloat16, on float32 variables: the LSTM's state and gates, the loss, the
gradients' accumulation and Adam stay float32, and every precision reads the same
checkpoints. Evaluation, prediction and exports always run float32. `auto`
picks mixed_bfloat16 on a CPU-only machine whose CPU has bfloat16 dot products
(AVX512_BF16 or AMX-BF16), where oneDNN runs them natively (unless
TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off), else float32; a TF_CONFIG cluster always
trains float32 (estimator_models.running.experiment.training_precision).
"""

import os

import tensorflow as tf

PRECISIONS = ('auto', 'float32', 'mixed_bfloat16')
_BFLOAT16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_has_bfloat16(cpuinfo_path='/proc/cpuinfo'):
    """Whether the CPU lists a bfloat16 dot-product instruction set (Linux; else False)."""
    try:
        with open(cpuinfo_path) as stream:
            flags = set(stream.read().split())
    except OSError:
        return False
    return any(flag in flags for flag in _BFLOAT16_CPU_FLAGS)


def resolved(hparams):
    """`precision` with `auto` resolved for this machine: 'float32' or 'mixed_bfloat16'."""
    chosen = hparams.get('precision', 'auto')
    if chosen != 'auto':
        return chosen
    # Without oneDNN (TF_ENABLE_ONEDNN_OPTS=0) bfloat16 convolutions fall back to slow
    # Eigen kernels.
    onednn = os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1') not in ('0', 'false', 'False')
    if onednn and cpu_has_bfloat16() and not tf.config.list_physical_devices('GPU'):
        return 'mixed_bfloat16'
    return 'float32'


def compute_dtype(hparams, mode):
    """tf.bfloat16 for a training graph under mixed_bfloat16, else tf.float32."""
    if mode == tf.estimator.ModeKeys.TRAIN and resolved(hparams) == 'mixed_bfloat16':
        return tf.bfloat16
    return tf.float32
