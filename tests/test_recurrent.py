"""The recurrent stack: output sizes, masking that makes padding invisible, and its
implementations (keras, fused, cudnn) agreeing on outputs, gradients and checkpoints."""


import numpy as np
import pytest
import tensorflow as tf

from estimator_models import cache
from estimator_models.errors import UserError
from estimator_models.layers import fused_recurrent, kernels, recurrent
from estimator_models.running import hparams

TRAIN, EVAL, PREDICT = tf.estimator.ModeKeys.TRAIN, tf.estimator.ModeKeys.EVAL, tf.estimator.ModeKeys.PREDICT


def _stack_hparams(overrides):
    # Implementations are compared in float32 (bfloat16 training: tests/test_precision.py).
    return {**hparams.COMMON_DEFAULTS, 'rnn_units': 8, 'precision': 'float32', **overrides}


def _final_outputs(feeds, overrides):
    """Runs one freshly initialised stack on each (sequences [B,T,F], lengths [B]) feed;
    returns the [B, U] outputs, all from the same weights."""
    with tf.Graph().as_default():
        inputs = tf.compat.v1.placeholder(tf.float32, [None, None, feeds[0][0].shape[-1]])
        lengths = tf.compat.v1.placeholder(tf.int32, [None])
        outputs = recurrent.recurrent_stack(inputs, _stack_hparams(overrides), EVAL, lengths=lengths)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return [session.run(outputs, {inputs: sequences, lengths: sequence_lengths})
                    for sequences, sequence_lengths in feeds]


@pytest.mark.parametrize('overrides, units', [
    ({'cell': 'lstm'}, 8),
    ({'cell': 'gru', 'rnn_layers': 2}, 8),
    ({'cell': 'lstm', 'bidirectional': True, 'rnn_layers': 2}, 16),
    ({'cell': 'lstm', 'rnn_implementation': 'fused'}, 8),
    ({'cell': 'lstm', 'rnn_implementation': 'fused', 'bidirectional': True, 'rnn_layers': 2}, 16),
])
def test_padding_past_the_length_never_changes_the_output(overrides, units):
    rng = np.random.default_rng(0)
    sequences = rng.normal(size=(3, 9, 5)).astype(np.float32)
    lengths = np.array([4, 9, 6])
    garbage = sequences.copy()
    for row, length in enumerate(lengths):
        garbage[row, length:] = rng.normal(size=garbage[row, length:].shape) * 100
    clean, noisy, truncated = _final_outputs(
        [(sequences, lengths), (garbage, lengths), (sequences[:1, :4], lengths[:1])], overrides)
    assert clean.shape == (3, units)
    np.testing.assert_allclose(noisy, clean, atol=1e-6)
    np.testing.assert_allclose(truncated, clean[:1], atol=1e-6)


def _stack_outputs(checkpoint, overrides, mode, sequences):
    """The stack's [B, U] outputs for `mode`, from `checkpoint` (written first if absent)."""
    with tf.Graph().as_default():
        outputs = recurrent.recurrent_stack(tf.constant(sequences), _stack_hparams(overrides), mode)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            if tf.compat.v1.train.checkpoint_exists(checkpoint):
                saver.restore(session, checkpoint)
            else:
                session.run(tf.compat.v1.global_variables_initializer())
                saver.save(session, checkpoint)
            return session.run(outputs)


@pytest.mark.parametrize('placement', ['input_dropout', 'dropout'])
def test_dropout_drops_in_training_only(tmp_path, placement):
    """Both placements change a training step's outputs and leave evaluation's alone."""
    sequences = np.random.default_rng(1).normal(size=(4, 6, 5)).astype(np.float32)
    checkpoint = str(tmp_path / 'stack')
    plain = _stack_outputs(checkpoint, {}, EVAL, sequences)
    evaluated = _stack_outputs(checkpoint, {placement: 0.5}, EVAL, sequences)
    trained = _stack_outputs(checkpoint, {placement: 0.5}, TRAIN, sequences)
    np.testing.assert_array_equal(evaluated, plain)
    assert np.abs(trained - plain).max() > 1e-3


def _outputs_and_gradients(checkpoint, overrides, sequences, lengths, save):
    """Builds the stack, restores `checkpoint` (or initialises and saves it when `save`),
    and returns its final outputs and the gradients of a fixed function of them with
    respect to the inputs and every variable, by variable name."""
    with tf.Graph().as_default():
        inputs = tf.constant(sequences)
        outputs = recurrent.recurrent_stack(inputs, _stack_hparams(overrides), TRAIN,
                                            lengths=None if lengths is None else tf.constant(lengths))
        weights = tf.constant(np.linspace(-1, 1, outputs.shape[-1], dtype=np.float32))
        loss = tf.reduce_sum(tf.sin(outputs * 3) * weights)
        variables = tf.compat.v1.trainable_variables()
        gradients = tf.gradients(loss, [inputs] + variables)
        saver = tf.compat.v1.train.Saver()
        # Every op built before the session starts: each one added later would send the
        # whole graph to it again. Non-zero biases, so that a layout mix-up of the bias
        # cannot hide.
        initialize = tf.compat.v1.global_variables_initializer()
        set_biases = tf.group([
            variable.assign(np.random.default_rng(1).normal(size=variable.shape).astype(np.float32))
            for variable in variables if 'bias' in variable.name])
        with tf.compat.v1.Session() as session:
            if save:
                session.run(initialize)
                session.run(set_biases)
                saver.save(session, checkpoint)
            else:
                saver.restore(session, checkpoint)
            values = session.run([outputs] + gradients)
    names = ['inputs'] + [variable.name for variable in variables]
    return values[0], dict(zip(names, values[1:]))


@pytest.mark.parametrize('structure', [
    {},
    {'bidirectional': True},
    {'rnn_layers': 2, 'bidirectional': True},
])
@pytest.mark.parametrize('with_lengths', [False, True])
def test_fused_reads_keras_checkpoints_and_gives_its_outputs_and_gradients(tmp_path, structure, with_lengths):
    rng = np.random.default_rng(0)
    sequences = rng.normal(size=(6, 11, 5)).astype(np.float32)
    lengths = np.array([11, 1, 4, 7, 11, 2], np.int32) if with_lengths else None
    checkpoint = str(tmp_path / 'keras')
    keras_outputs, keras_gradients = _outputs_and_gradients(
        checkpoint, {'rnn_implementation': 'keras', **structure}, sequences, lengths, save=True)
    fused_outputs, fused_gradients = _outputs_and_gradients(
        checkpoint, {'rnn_implementation': 'fused', **structure}, sequences, lengths, save=False)
    np.testing.assert_allclose(fused_outputs, keras_outputs, atol=1e-5)
    assert sorted(fused_gradients) == sorted(keras_gradients)
    for name, gradient in keras_gradients.items():
        np.testing.assert_allclose(fused_gradients[name], gradient, atol=1e-5, err_msg=name)


@pytest.mark.parametrize('units, features', [(20, 7), (72, 7), (20, 30)])
def test_fused_agrees_with_keras_where_batches_and_units_do_not_fill_its_blocks(tmp_path, units, features):
    """37 rows split over the threads into blocks of up to 6; 20 and 72 units leave the
    last 16-unit and 64-unit panels of the kernel part empty. 7 input features are
    projected inside the op's loop, 30 (more than the units) by a matmul before it."""
    rng = np.random.default_rng(units)
    sequences = rng.normal(size=(37, 9, features)).astype(np.float32)
    lengths = rng.integers(1, 10, size=37).astype(np.int32)
    checkpoint = str(tmp_path / 'keras')
    structure = {'rnn_units': units}
    keras_outputs, keras_gradients = _outputs_and_gradients(
        checkpoint, {'rnn_implementation': 'keras', **structure}, sequences, lengths, save=True)
    fused_outputs, fused_gradients = _outputs_and_gradients(
        checkpoint, {'rnn_implementation': 'fused', **structure}, sequences, lengths, save=False)
    np.testing.assert_allclose(fused_outputs, keras_outputs, atol=1e-5)
    for name, gradient in keras_gradients.items():
        np.testing.assert_allclose(fused_gradients[name], gradient, atol=1e-5 * max(1, np.abs(gradient).max()),
                                   err_msg=name)


def test_keras_reads_fused_checkpoints(tmp_path):
    rng = np.random.default_rng(2)
    sequences = rng.normal(size=(4, 6, 3)).astype(np.float32)
    lengths = np.array([6, 3, 1, 5], np.int32)
    checkpoint = str(tmp_path / 'fused')
    fused_outputs, _ = _outputs_and_gradients(
        checkpoint, {'rnn_implementation': 'fused', 'rnn_layers': 2}, sequences, lengths, save=True)
    keras_outputs, _ = _outputs_and_gradients(
        checkpoint, {'rnn_implementation': 'keras', 'rnn_layers': 2}, sequences, lengths, save=False)
    np.testing.assert_allclose(keras_outputs, fused_outputs, atol=1e-5)


def test_auto_runs_fused_on_this_cpu_and_serving_graphs_run_keras():
    lstm = _stack_hparams({'rnn_implementation': 'auto'})
    assert kernels.available()
    assert recurrent.implementation(lstm, TRAIN) == 'fused'
    assert recurrent.implementation(lstm, EVAL) == 'fused'
    assert recurrent.implementation(lstm, PREDICT) == 'keras'
    assert recurrent.implementation({**lstm, 'cell': 'gru'}, TRAIN) == 'keras'


def test_a_fused_serving_graph_holds_no_custom_op():
    with tf.Graph().as_default() as graph:
        recurrent.recurrent_stack(tf.zeros([2, 3, 4]), _stack_hparams({'rnn_implementation': 'fused'}), PREDICT)
        assert 'LstmSequence' not in {op.type for op in graph.get_operations()}
    with tf.Graph().as_default() as graph:
        recurrent.recurrent_stack(tf.zeros([2, 3, 4]), _stack_hparams({'rnn_implementation': 'fused'}), TRAIN)
        assert 'LstmSequence' in {op.type for op in graph.get_operations()}


@pytest.mark.parametrize('overrides, message', [
    ({'cell': 'gru', 'rnn_implementation': 'fused'}, 'rnn_implementation=fused runs LSTM only'),
    ({'rnn_implementation': 'cudnn'}, 'rnn_implementation=cudnn needs a GPU'),
])
def test_an_implementation_that_cannot_run_is_one_line(overrides, message):
    with pytest.raises(UserError, match=message) as raised:
        with tf.Graph().as_default():
            recurrent.recurrent_stack(tf.zeros([2, 3, 4]), _stack_hparams(overrides), TRAIN)
    assert '\n' not in str(raised.value)


def test_cudnn_graph_builds_with_its_op_and_keras_weights():
    """No GPU here: the graph is built, not run (BENCHMARKS.md has no GPU figures)."""
    with tf.Graph().as_default() as graph:
        layer = fused_recurrent.Bidirectional(fused_recurrent.CudnnLSTM, 8, 'rnn_0', name='bidirectional_rnn_0')
        outputs = layer(tf.zeros([2, 5, 3]), mask=tf.sequence_mask([5, 2], 5))
        assert outputs.shape.as_list() == [2, 16]
        assert [op.type for op in graph.get_operations()].count('CudnnRNNV3') == 2
        names = sorted(variable.name for variable in tf.compat.v1.global_variables())
    assert names == sorted(f'bidirectional_rnn_0/{direction}_rnn_0/lstm_cell/{name}:0'
                           for direction in ('forward', 'backward')
                           for name in ('kernel', 'recurrent_kernel', 'bias'))


def test_cudnn_parameters_round_trip_and_match_the_graph_conversion():
    rng = np.random.default_rng(3)
    kernel, recurrent_kernel, bias = (rng.normal(size=shape).astype(np.float32)
                                      for shape in ((5, 28), (7, 28), (28,)))
    params = fused_recurrent.cudnn_params_numpy(kernel, recurrent_kernel, bias)
    assert params.shape == (4 * 7 * (5 + 7) + 8 * 7,)
    for back, original in zip(fused_recurrent.keras_weights_from_cudnn(params, 5, 7),
                              (kernel, recurrent_kernel, bias)):
        np.testing.assert_array_equal(back, original)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        in_graph = session.run(fused_recurrent.cudnn_params(kernel, recurrent_kernel, bias))
    np.testing.assert_array_equal(in_graph, params)


def test_reversed_padding_is_rotated_to_the_end_and_back():
    steps = np.arange(5, dtype=np.float32)
    # A reversed clip of length 3: two padding steps first.
    time_major = np.stack([steps, steps * 10], axis=1)[:, :, None]           # [T=5, B=2, 1]
    lengths = np.array([3, 5], np.int32)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        to_end = fused_recurrent._rotate_steps(tf.constant(time_major), tf.constant(5 - lengths))
        back = fused_recurrent._rotate_steps(to_end, tf.constant(lengths))
        to_end, back = session.run([to_end, back])
    np.testing.assert_array_equal(to_end[:, 0, 0], [2, 3, 4, 0, 1])
    np.testing.assert_array_equal(to_end[:, 1, 0], steps * 10)
    np.testing.assert_array_equal(back, time_major)


def test_without_a_compiler_auto_runs_keras_and_fused_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv(cache.ENV, str(tmp_path))  # no kernel built here yet
    lstm = _stack_hparams({'rnn_implementation': 'auto'})
    assert recurrent.implementation(lstm, TRAIN) == 'keras'
    with pytest.raises(UserError, match=r'rnn_implementation=fused: the C\+\+ compiler CXX=\S+ is not found') as raised:
        recurrent.implementation({**lstm, 'rnn_implementation': 'fused'}, TRAIN)
    assert '\n' not in str(raised.value)
