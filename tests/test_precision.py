"""precision=mixed_bfloat16: a training graph convolves and projects the LSTM's inputs
in bfloat16 on float32 variables, learns, and leaves evaluation, serving and
checkpoints as float32 runs have them."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import train_on_a_few_examples
from estimator_models import cnn_lstm
from estimator_models.layers import fused_recurrent, precision
from estimator_models.running import cluster, experiment, hparams
from estimator_models.serving import receivers
from input_fns.errors import UserError

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


def test_bfloat16_products_stay_close_to_float32_and_train_float32_variables():
    """The input projection and the recurrent kernel's gradient product in bfloat16."""
    rng = np.random.default_rng(0)
    sequences = rng.normal(size=(8, 7, 40)).astype(np.float32)
    weights = [rng.normal(size=shape, scale=0.2).astype(np.float32) for shape in ((40, 64), (16, 64), (64,))]
    results = []
    for dtype in (tf.float32, tf.bfloat16):
        with tf.Graph().as_default() as graph:
            layer = fused_recurrent.FusedLSTM(16, projection_dtype=dtype, name='rnn_0')
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
