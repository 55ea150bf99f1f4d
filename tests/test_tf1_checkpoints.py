"""TF1 recurrent cells' weights, converted, give the same outputs in the Keras layers the
project's recurrent stack uses; and bin/convert_checkpoint does it for a saved checkpoint."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli
from estimator_models.errors import UserError
from estimator_models.legacy import tf1_checkpoints

STEPS, FEATURES, UNITS, BATCH = 7, 5, 6, 4
rnn_cell = tf.compat.v1.nn.rnn_cell


def _tf1_cell_outputs(make_cell, sequences, seed=0):
    """Runs a TF1 cell under dynamic_rnn with random weights (biases too): returns
    ({variable name: value}, outputs at the last step [B, U])."""
    with tf.Graph().as_default():
        outputs, _ = tf.compat.v1.nn.dynamic_rnn(make_cell(), tf.constant(sequences), dtype=tf.float32)
        variables = tf.compat.v1.global_variables()
        rng = np.random.default_rng(seed)
        with tf.compat.v1.Session() as session:
            for variable in variables:
                variable.load(rng.normal(0, 0.5, variable.shape).astype(np.float32), session)
            return ({variable.op.name: session.run(variable) for variable in variables},
                    session.run(outputs[:, -1]))


def _keras_outputs(layer, converted, scope, sequences):
    layer(tf.constant(sequences))  # builds the weights
    cell_name = 'gru_cell' if isinstance(layer, tf.keras.layers.GRU) else 'lstm_cell'
    layer.set_weights([converted[f'{scope}/{cell_name}/{part}']
                       for part in ('kernel', 'recurrent_kernel', 'bias')])
    return layer(tf.constant(sequences)).numpy()


@pytest.fixture
def sequences():
    return np.random.default_rng(1).normal(size=(BATCH, STEPS, FEATURES)).astype(np.float32)


@pytest.mark.parametrize('make_cell, forget_bias', [
    (lambda: rnn_cell.LSTMCell(UNITS), 1.0),
    (lambda: rnn_cell.BasicLSTMCell(UNITS, forget_bias=0.25), 0.25),
])
def test_an_lstm_cell_becomes_a_keras_lstm_with_the_same_outputs(make_cell, forget_bias, sequences):
    variables, expected = _tf1_cell_outputs(make_cell, sequences)
    converted, mapping, unmapped = tf1_checkpoints.convert(variables, forget_bias)
    assert unmapped == []
    assert sorted(converted) == ['rnn_0/lstm_cell/bias', 'rnn_0/lstm_cell/kernel',
                                 'rnn_0/lstm_cell/recurrent_kernel']
    assert mapping[0][1] == 'rnn_0'
    actual = _keras_outputs(tf.keras.layers.LSTM(UNITS), converted, 'rnn_0', sequences)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_a_gru_cell_becomes_a_keras_gru_with_the_reset_gate_before_the_matmul(sequences):
    variables, expected = _tf1_cell_outputs(lambda: rnn_cell.GRUCell(UNITS), sequences)
    converted, _, unmapped = tf1_checkpoints.convert(variables)
    assert unmapped == []
    actual = _keras_outputs(tf.keras.layers.GRU(UNITS, reset_after=False), converted, 'rnn_0', sequences)
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    # Keras' default GRU keeps two biases per gate: the converted weights cannot fit it.
    default_gru = tf.keras.layers.GRU(UNITS)
    default_gru(tf.constant(sequences))
    assert default_gru.get_weights()[2].shape != converted['rnn_0/gru_cell/bias'].shape


def test_stacked_and_bidirectional_cells_get_the_project_layer_names(sequences):
    multi, _ = _tf1_cell_outputs(
        lambda: rnn_cell.MultiRNNCell([rnn_cell.LSTMCell(UNITS), rnn_cell.LSTMCell(UNITS)]), sequences)
    assert sorted({name.split('/')[0] for name in tf1_checkpoints.convert(multi)[0]}) == ['rnn_0', 'rnn_1']
    names = {'bidirectional_rnn/fw/lstm_cell/kernel': np.zeros([FEATURES + UNITS, 4 * UNITS]),
             'bidirectional_rnn/fw/lstm_cell/bias': np.zeros([4 * UNITS]),
             'bidirectional_rnn/bw/lstm_cell/kernel': np.zeros([FEATURES + UNITS, 4 * UNITS]),
             'bidirectional_rnn/bw/lstm_cell/bias': np.zeros([4 * UNITS])}
    converted = tf1_checkpoints.convert(names)[0]
    assert 'bidirectional_rnn_0/forward_rnn_0/lstm_cell/recurrent_kernel' in converted
    assert 'bidirectional_rnn_0/backward_rnn_0/lstm_cell/kernel' in converted


def test_optimizer_slots_are_left_behind_and_foreign_weights_are_reported():
    variables = {
        'rnn/lstm_cell/kernel': np.zeros([FEATURES + UNITS, 4 * UNITS]),
        'rnn/lstm_cell/bias': np.zeros([4 * UNITS]),
        'rnn/lstm_cell/kernel/Adam': np.zeros([FEATURES + UNITS, 4 * UNITS]),
        'beta1_power': np.zeros([]), 'global_step': np.zeros([]),
        'dense/kernel': np.zeros([UNITS, 3]), 'dense/bias': np.zeros([3]),
        'conv2d/kernel': np.zeros([3, 3, 1, 8]),
    }
    converted, _, unmapped = tf1_checkpoints.convert(variables)
    assert sorted(converted) == ['logits/bias', 'logits/kernel', 'rnn_0/lstm_cell/bias',
                                 'rnn_0/lstm_cell/kernel', 'rnn_0/lstm_cell/recurrent_kernel']
    assert unmapped == ['conv2d/kernel']


def _saved_tf1_checkpoint(directory, extra_variable=False):
    """A TF1 LSTMCell + dense model saved by a plain Saver; returns its prefix."""
    with tf.Graph().as_default():
        sequences = tf.zeros([2, STEPS, FEATURES])
        outputs, _ = tf.compat.v1.nn.dynamic_rnn(rnn_cell.LSTMCell(UNITS), sequences, dtype=tf.float32)
        tf.compat.v1.layers.dense(outputs[:, -1], 3)
        if extra_variable:
            tf.compat.v1.get_variable('embedding/table', [10, 4])
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return tf.compat.v1.train.Saver().save(session, str(directory / 'tf1' / 'model.ckpt'))


def test_convert_checkpoint_writes_the_converted_variables_and_prints_its_map(tmp_path):
    source = _saved_tf1_checkpoint(tmp_path)
    result = run_cli('convert_checkpoint', f'--from={source}', f'--to={tmp_path / "converted"}')
    assert 'rnn/lstm_cell/bias, rnn/lstm_cell/kernel -> rnn_0: LSTM' in result.stdout
    assert 'dense/kernel -> logits/kernel: unchanged' in result.stdout
    written = dict(tf.train.list_variables(str(tmp_path / 'converted')))
    assert written['rnn_0/lstm_cell/kernel'] == [FEATURES, 4 * UNITS]
    assert written['rnn_0/lstm_cell/recurrent_kernel'] == [UNITS, 4 * UNITS]
    kernel = tf.train.load_variable(source, 'dense/kernel')
    np.testing.assert_array_equal(tf.train.load_variable(str(tmp_path / 'converted'), 'logits/kernel'), kernel)


def test_weights_that_fit_nowhere_are_one_error_naming_them(tmp_path):
    source = _saved_tf1_checkpoint(tmp_path, extra_variable=True)
    with pytest.raises(UserError, match='cannot map these variables of .*: embedding/table'):
        tf1_checkpoints.convert_checkpoint(source, str(tmp_path / 'converted'))
    result = run_cli('convert_checkpoint', f'--from={tmp_path / "no_such_checkpoint"}',
                     f'--to={tmp_path / "converted"}', check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'error: --from={tmp_path / "no_such_checkpoint"}: no such checkpoint or model_dir']
