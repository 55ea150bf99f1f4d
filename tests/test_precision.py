"""precision=mixed_bfloat16: a training graph convolves, projects the LSTM's inputs and
multiplies by its recurrent kernel in bfloat16 on float32 variables, learns, and leaves
evaluation, serving and checkpoints as float32 runs have them."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import build_kernel_variant, train_on_a_few_examples
from estimator_models import cnn_lstm
from estimator_models.errors import UserError
from estimator_models.layers import fused_recurrent, kernels, precision
from estimator_models.running import cluster, experiment, hparams
from estimator_models.serving import receivers

TRAIN, EVAL, PREDICT = tf.estimator.ModeKeys.TRAIN, tf.estimator.ModeKeys.EVAL, tf.estimator.ModeKeys.PREDICT
# As tests/test_cnn_lstm.py's fast settings (no BatchNorm: its moving statistics trail a
# 40-step run), in bfloat16.
BFLOAT16 = {'rnn_units': '32', 'cnn_filters': '[16,32]', 'batch_size': '32', 'learning_rate': '0.005',
            'warmup_steps': '1', 'lr_schedule': 'constant', 'augment': 'none', 'cnn_batch_norm': 'false',
            'precision': 'mixed_bfloat16', 'rnn_implementation': 'fused'}


@pytest.mark.parametrize('flags, expected', [
    ('fpu sse2 avx512f avx512_bf16 avx512_vnni', True),
    ('fpu sse2 amx_bf16 amx_tile', True),
    ('fpu sse2 avx2 avx512f', False),
])
def test_bfloat16_cpus_are_read_from_cpuinfo(tmp_path, flags, expected):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text(f'processor\t: 0\nflags\t\t: {flags}\n')
    assert precision.cpu_has_bfloat16(str(cpuinfo)) is expected
    assert precision.cpu_has_bfloat16(str(tmp_path / 'missing')) is False


def test_auto_is_bfloat16_where_the_cpu_and_onednn_run_it(monkeypatch):
    expected = 'mixed_bfloat16' if precision.cpu_has_bfloat16() else 'float32'
    assert precision.resolved({'precision': 'auto'}) == expected
    assert precision.resolved({'precision': 'float32'}) == 'float32'
    monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '0')
    assert precision.resolved({'precision': 'auto'}) == 'float32'
    assert precision.resolved({'precision': 'mixed_bfloat16'}) == 'mixed_bfloat16'


def _graph_dtypes(mode, overrides):
    """{op type: set of dtypes} of cnn_lstm's graph for `mode` under `overrides`."""
    run_hparams = hparams.resolve(cnn_lstm, overrides, data_shape=(28, 28, 1, 10))
    with tf.Graph().as_default() as graph:
        features, _ = receivers.receivers(cnn_lstm.KIND, run_hparams)
        labels = tf.zeros([tf.shape(features['image'])[0]], tf.int64)
        cnn_lstm.model_fn(features, None if mode == PREDICT else labels, mode,
                          dict(run_hparams, train_steps=10))
        found = {}
        for op in graph.get_operations():
            if op.type in ('Conv2D', 'MatMul') and 'gradients' not in op.name:
                found.setdefault(op.type, set()).add(op.get_attr('T'))
        return found


def test_a_bfloat16_training_graph_convolves_and_projects_in_bfloat16_and_others_do_not():
    assert _graph_dtypes(TRAIN, BFLOAT16) == {'Conv2D': {tf.bfloat16}, 'MatMul': {tf.bfloat16, tf.float32}}
    for mode in (EVAL, PREDICT):
        assert _graph_dtypes(mode, BFLOAT16) == {'Conv2D': {tf.float32}, 'MatMul': {tf.float32}}
    float32 = {**BFLOAT16, 'precision': 'float32'}
    assert _graph_dtypes(TRAIN, float32) == {'Conv2D': {tf.float32}, 'MatMul': {tf.float32}}


@pytest.mark.parametrize('steps', [7, 1])
def test_bfloat16_products_stay_close_to_float32_and_train_float32_variables(steps):
    """The input projection, the recurrent products and the product that gives both
    kernels' gradients in bfloat16; one step too, where no h_{t-1} but the zero state
    meets a gradient."""
    rng = np.random.default_rng(0)
    sequences = rng.normal(size=(8, steps, 40)).astype(np.float32)
    weights = [rng.normal(size=shape, scale=0.2).astype(np.float32) for shape in ((40, 64), (16, 64), (64,))]
    results = []
    for dtype in (tf.float32, tf.bfloat16):
        with tf.Graph().as_default() as graph:
            layer = fused_recurrent.FusedLSTM(16, arithmetic_dtype=dtype, name='rnn_0')
            outputs = layer(tf.constant(sequences))
            variables = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
            gradients = tf.gradients(tf.reduce_sum(tf.sin(outputs * 3)), variables)
            products = {op.get_attr('T') for op in graph.get_operations() if op.type == 'MatMul'}
            assert products == {dtype}
            assert all(tensor.dtype == tf.float32 for tensor in variables + gradients)
            with tf.compat.v1.Session() as session:
                for variable, value in zip(variables, weights):
                    variable.load(value, session)
                results.append(session.run([outputs] + gradients))
    exact, rounded = results
    # bfloat16 keeps 8 bits of mantissa: about 0.4% of each product.
    np.testing.assert_allclose(rounded[0], exact[0], atol=0.03)
    assert 0 < np.abs(rounded[0] - exact[0]).max()
    for rounded_gradient, exact_gradient in zip(rounded[1:], exact[1:]):
        scale = np.abs(exact_gradient).max()
        np.testing.assert_allclose(rounded_gradient, exact_gradient, atol=0.05 * scale)


def _bfloat16(array):
    """`array` rounded to bfloat16 (to nearest even, as the kernel rounds), as float64."""
    return tf.cast(tf.cast(array, tf.bfloat16), tf.float64).numpy()


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _reference_steps(x_proj, kernel, mask, h, c):
    """Each step of the fused op's forward pass in float64 numpy, from the op's own state
    before it (h, c [T, B, U]), h_{t-1} and the kernel rounded to bfloat16 for the step's
    product: (h, c, gates [T, B, 4U]) as the op should have written them."""
    units = kernel.shape[0]
    steps = []
    for t, (x_t, mask_t) in enumerate(zip(x_proj, mask)):
        h_prev, c_prev = (h[t - 1], c[t - 1]) if t else (np.zeros_like(h[0]), np.zeros_like(c[0]))
        z = _bfloat16(h_prev) @ _bfloat16(kernel) + x_t
        i, f, o = _sigmoid(z[:, :units]), _sigmoid(z[:, units:2 * units]), _sigmoid(z[:, 3 * units:])
        g = np.tanh(z[:, 2 * units:3 * units])
        counts = mask_t[:, None] != 0
        c_t = np.where(counts, f * c_prev + i * g, c_prev)
        steps.append((np.where(counts, o * np.tanh(c_t), h_prev), c_t, np.concatenate([i, f, g, o], axis=1)))
    return [np.stack(parts) for parts in zip(*steps)]


def _reference_gradient(kernel, mask, c, gates, grad_h, grad_x_proj):
    """Each step of the fused op's backward pass in float64 numpy, the gradient reaching
    h_t from the op's own grad_x_proj of step t + 1, rounded to bfloat16 with the kernel
    for that product: the grad_x_proj [T, B, 4U] the op should have written."""
    dh_next, dc_next = np.zeros(grad_h.shape[1:]), np.zeros(grad_h.shape[1:])
    steps = []
    for t in reversed(range(len(grad_h))):
        i, f, g, o = np.split(gates[t], 4, axis=1)
        c_prev = c[t - 1] if t else np.zeros_like(c[t])
        dh = dh_next + grad_h[t]
        tanh_c = np.tanh(c[t])
        dc = dc_next + dh * o * (1 - tanh_c ** 2)
        dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g ** 2),
                             dh * tanh_c * o * (1 - o)], axis=1)
        counts = mask[t][:, None] != 0  # a padded step passed h and c through: so does their gradient
        steps.append(np.where(counts, dz, 0))
        dc_next = np.where(counts, dc * f, dc_next)
        dh_next = np.where(counts, 0, dh) + _bfloat16(grad_x_proj[t]) @ _bfloat16(kernel).T
    return np.stack(steps[::-1])


BFLOAT16_SHAPES = [(6, 40, 16), (5, 3, 48), (28, 128, 128)]


@pytest.mark.skipif(not precision.cpu_has_bfloat16(), reason='the CPU has no AVX512_BF16')
@pytest.mark.parametrize('steps, batch, units', BFLOAT16_SHAPES)
def test_the_fused_ops_bfloat16_products_round_only_their_operands(steps, batch, units):
    check_bfloat16_products(kernels.load(), steps, batch, units)


def check_bfloat16_products(library, steps, batch, units):
    """Each step multiplies bfloat16 h_{t-1} (forward) or gate gradients (backward) by the
    bfloat16 kernel, summing in float32: a float64 reference that rounds the same operands
    agrees to float32 accuracy, while float32 products differ by bfloat16's rounding."""
    rng = np.random.default_rng(units)
    x_proj = rng.normal(size=(steps, batch, 4 * units)).astype(np.float32)
    kernel = rng.normal(size=(units, 4 * units), scale=units ** -0.5).astype(np.float32)
    mask = (rng.random((steps, batch)) > 0.25).astype(np.float32)
    grad_h = rng.normal(size=(steps, batch, units)).astype(np.float32)
    bias = rng.normal(size=4 * units, scale=0.1).astype(np.float32)
    nothing = np.zeros(0, np.float32)
    h, c, gates, _, _ = [tensor.numpy() for tensor in library.lstm_sequence(x_proj, kernel, bias, mask, nothing,
                                                                         bfloat16_products=True)]
    grad_x_proj, grad_bias, _, _, _ = [tensor.numpy() for tensor in library.lstm_sequence_grad(
        kernel, mask, c, gates, grad_h, nothing, nothing, nothing, bfloat16_products=True)]

    for computed, expected in zip((h, c, gates), _reference_steps(x_proj + bias, kernel, mask, h, c)):
        np.testing.assert_allclose(computed, expected, atol=1e-5)
    expected_grad = _reference_gradient(kernel, mask, c, gates, grad_h, grad_x_proj)
    np.testing.assert_allclose(grad_x_proj, expected_grad, atol=1e-5 * np.abs(expected_grad).max())
    # The bias gradient is a float32 sum over steps x batch; against the exact sum it may
    # differ by float32 rounding of that many terms, a millionth of their magnitudes' sum.
    magnitude = np.abs(grad_x_proj).sum(axis=(0, 1)).max()
    np.testing.assert_allclose(grad_bias, grad_x_proj.astype(np.float64).sum(axis=(0, 1)), atol=1e-6 * magnitude)

    float32_h = library.lstm_sequence(x_proj, kernel, bias, mask, nothing)[0].numpy()
    assert np.abs(float32_h - h).max() > 1e-4


@pytest.mark.parametrize('steps, batch, units', [(6, 40, 16), (5, 9, 20)])
def test_the_fused_ops_hand_over_bfloat16_copies_of_previous_h_and_of_the_gate_gradients(steps, batch, units):
    """Units in multiples of 16 write the copies as the bfloat16 products' operands; 20
    units multiply in float32 and round them at the end."""
    check_bfloat16_outputs(kernels.load().lstm_sequence, kernels.load().lstm_sequence_grad, steps, batch, units)


def check_bfloat16_outputs(forward_op, gradient_op, steps, batch, units):
    """With bfloat16_outputs the forward op reads a bfloat16 x_proj as its float32 widening
    and gives every step's h_{t-1} (zeros at the first step), the gradient op the gate
    gradients: both the very float32 values of a run without them, rounded to bfloat16."""
    rng = np.random.default_rng(units)
    x_proj = _bfloat16(rng.normal(size=(steps, batch, 4 * units))).astype(np.float32)  # exact in bfloat16
    kernel = rng.normal(size=(units, 4 * units), scale=units ** -0.5).astype(np.float32)
    bias = rng.normal(size=4 * units, scale=0.1).astype(np.float32)
    mask = (rng.random((steps, batch)) > 0.25).astype(np.float32)
    grad_h = rng.normal(size=(steps, batch, units)).astype(np.float32)
    nothing = np.zeros(0, np.float32)
    h, c, gates, h_last, no_copy = forward_op(x_proj, kernel, bias, mask, nothing, bfloat16_products=True)
    assert no_copy.shape == (0,)
    *same, previous_h = forward_op(tf.cast(x_proj, tf.bfloat16), kernel, bias, mask, nothing,
                                   bfloat16_products=True, bfloat16_outputs=True)
    for expected, computed in zip((h, c, gates, h_last), same):
        np.testing.assert_array_equal(computed, expected)
    assert previous_h.dtype == tf.bfloat16
    expected_previous = np.concatenate([np.zeros((1, batch, units)), _bfloat16(h[:-1])])
    np.testing.assert_array_equal(tf.cast(previous_h, tf.float64), expected_previous)

    grad_x_proj, grad_bias, _, _, no_copy = gradient_op(kernel, mask, c, gates, grad_h, nothing, nothing, nothing,
                                                        bfloat16_products=True)
    assert no_copy.shape == (0,)
    no_float32, same_bias, _, _, rounded = gradient_op(kernel, mask, c, gates, grad_h, nothing, nothing, nothing,
                                                       bfloat16_products=True, bfloat16_outputs=True)
    assert no_float32.shape == (0,)
    np.testing.assert_array_equal(same_bias, grad_bias)
    np.testing.assert_array_equal(tf.cast(rounded, tf.float64), _bfloat16(grad_x_proj))


# VDPBF16PS and VCVTNEPS2BF16 as exact float32 code: the same pairs (k, k + 1) summed into
# one lane, the same rounding to nearest even.
EMULATED_INSTRUCTIONS = r"""
#include <immintrin.h>
#include <cstdint>
#include <cstring>
static inline uint16_t EmulatedRound(float value) {
  uint32_t bits; std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
static inline __m256bh EmulatedConvert(__m512 values) {
  float in[16]; uint16_t out[16]; __m256bh result;
  _mm512_storeu_ps(in, values);
  for (int i = 0; i < 16; ++i) out[i] = EmulatedRound(in[i]);
  std::memcpy(&result, out, sizeof(result));
  return result;
}
static inline float EmulatedWiden(uint16_t value) {
  uint32_t bits = uint32_t(value) << 16; float result; std::memcpy(&result, &bits, sizeof(result));
  return result;
}
static inline __m512 EmulatedDot(__m512 sum, __m512bh a, __m512bh b) {
  float lanes[16]; uint16_t a_pairs[32], b_pairs[32];
  _mm512_storeu_ps(lanes, sum); std::memcpy(a_pairs, &a, 64); std::memcpy(b_pairs, &b, 64);
  for (int i = 0; i < 16; ++i)
    lanes[i] += EmulatedWiden(a_pairs[2 * i]) * EmulatedWiden(b_pairs[2 * i]) +
                EmulatedWiden(a_pairs[2 * i + 1]) * EmulatedWiden(b_pairs[2 * i + 1]);
  return _mm512_loadu_ps(lanes);
}
"""


def _with_emulated_bfloat16(source):
    """The kernel's source with the two bfloat16 instructions emulated."""
    source = (source.replace('__AVX512BF16__', 'EMULATED_AVX512BF16')
              .replace('_mm512_cvtneps_pbh(', 'EmulatedConvert(').replace('_mm512_dpbf16_ps(', 'EmulatedDot('))
    first_include = source.index('#include "tensorflow/core/framework/op.h"')
    return source[:first_include] + EMULATED_INSTRUCTIONS + source[first_include:]


@pytest.mark.skipif(precision.cpu_has_bfloat16() or 'avx512f' not in kernels._cpu_flags().split(),
                    reason='a CPU with AVX512_BF16 runs the real instructions above; one without AVX-512 '
                           'builds no bfloat16 path')
def test_the_bfloat16_path_with_its_two_instructions_emulated(tmp_path):
    """Where the CPU lacks AVX512_BF16 the kernel's bfloat16 blocks, panels and operand
    buffers are still checked: built with the two instructions emulated, the op passes the
    same references, in a fresh process (a process holds one library of these ops)."""
    library = build_kernel_variant(tmp_path, 'emulated', _with_emulated_bfloat16, ['-DEMULATED_AVX512BF16'])
    check = (f'import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import tensorflow as tf; '
             f'import test_precision; library = tf.load_op_library({str(library)!r}); '
             f'[test_precision.check_bfloat16_products(library, *shape) '
             f'for shape in test_precision.BFLOAT16_SHAPES + [(9, 37, 80)]]; '
             f'test_precision.check_bfloat16_outputs(library.lstm_sequence, library.lstm_sequence_grad, 6, 40, 16)')
    result = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_units_the_bfloat16_kernel_cannot_tile_multiply_in_float32():
    """bfloat16 products need units in multiples of 16; others run the float32 products."""
    rng = np.random.default_rng(0)
    x_proj = rng.normal(size=(4, 5, 80)).astype(np.float32)
    kernel = rng.normal(size=(20, 80), scale=0.2).astype(np.float32)
    mask, bias = np.ones((4, 5), np.float32), np.zeros(80, np.float32)
    library = kernels.load()
    nothing = np.zeros(0, np.float32)
    np.testing.assert_array_equal(library.lstm_sequence(x_proj, kernel, bias, mask, nothing, bfloat16_products=True)[0],
                                  library.lstm_sequence(x_proj, kernel, bias, mask, nothing)[0])


def test_cnn_lstm_learns_in_bfloat16(digits_npz, tmp_path):
    _, before, after = train_on_a_few_examples('cnn_lstm', digits_npz, str(tmp_path), 40, BFLOAT16)
    assert after < before * 0.5


def test_an_unknown_precision_is_one_line():
    with pytest.raises(UserError, match='precision'):
        hparams.resolve(cnn_lstm, {'precision': 'float16'}, data_shape=(28, 28, 1, 10))


def test_a_cluster_trains_float32_and_refuses_bfloat16_in_one_line():
    chief = cluster.Task(type='chief', cluster={'chief': ['localhost:1'], 'worker': ['localhost:2']})
    assert experiment.training_precision({'precision': 'auto'}, chief) == 'float32'
    assert experiment.training_precision({'precision': 'float32'}, chief) == 'float32'
    with pytest.raises(UserError, match='precision=mixed_bfloat16 cannot train in a TF_CONFIG cluster'):
        experiment.training_precision({'precision': 'mixed_bfloat16'}, chief)
    assert experiment.training_precision({'precision': 'auto'}) == precision.resolved({'precision': 'auto'})
