"""The unmasked recurrent stack (the form ONNX exports convert) answers exactly as the
masked one for the same weights: every cell, direction, depth and pooling, every length."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from estimator_models.layers import pooling, recurrent
from estimator_models.running import hparams

EVAL = tf.estimator.ModeKeys.EVAL
STEPS = 7


def _stack_hparams(overrides):
    return {**hparams.COMMON_DEFAULTS, 'rnn_units': 6, 'attention_units': 5, **overrides}


def _sequences():
    """(sequences [T, T, 4], lengths [T]): every length 1..T, the padding of each row
    1e3, which no true step may see."""
    rng = np.random.default_rng(0)
    lengths = np.arange(1, STEPS + 1, dtype=np.int32)
    sequences = rng.normal(size=(STEPS, STEPS, 4)).astype(np.float32)
    for row, length in enumerate(lengths):
        sequences[row, length:] = 1e3
    return sequences, lengths


def _every_pooling(checkpoint, overrides, sequences, lengths, save):
    """{pooling: the pooled stack's outputs [B, U]} for every pooling, and under
    'every_step' a stack's last layer's outputs at every step [B, T, U]: each stack in a
    scope of its own of one graph, its weights saved to (or, without `save`, restored
    from) `checkpoint`."""
    with tf.Graph().as_default():
        inputs, lengths_tensor = tf.constant(sequences), tf.constant(lengths)
        outputs = {}
        for how in pooling.POOLINGS:
            with tf.compat.v1.variable_scope(how):
                outputs[how], _ = recurrent.pooled_recurrent_stack(
                    inputs, _stack_hparams({**overrides, 'pooling': how}), EVAL, lengths_tensor)
        with tf.compat.v1.variable_scope('every_step'):
            outputs['every_step'] = recurrent.recurrent_stack(inputs, _stack_hparams(overrides), EVAL,
                                                              lengths_tensor, return_sequences=True)
        saver = tf.compat.v1.train.Saver()
        # Every op built before the session starts: each one added later would send the
        # whole graph to it again. Non-zero biases, so a bias mix-up cannot hide.
        initialize = tf.compat.v1.global_variables_initializer()
        set_biases = tf.group([
            variable.assign(np.random.default_rng(1).normal(size=variable.shape).astype(np.float32))
            for variable in tf.compat.v1.global_variables() if 'bias' in variable.name])
        with tf.compat.v1.Session() as session:
            if save:
                session.run(initialize)
                session.run(set_biases)
                saver.save(session, checkpoint)
            else:
                saver.restore(session, checkpoint)
            return session.run(outputs)


@pytest.fixture(scope='module')
def masked_and_unmasked(tmp_path_factory):
    """(cell, structure) -> (masked outputs, unmasked outputs) of _every_pooling, the same
    weights in both; computed once for the four poolings' cases."""
    @functools.cache
    def outputs(cell, structure):
        overrides = {**dict(cell), **dict(structure)}
        checkpoint = str(tmp_path_factory.mktemp('keras') / 'keras')
        sequences, lengths = _sequences()
        masked = _every_pooling(checkpoint, {**overrides, 'rnn_implementation': 'keras'}, sequences, lengths,
                                save=True)
        unmasked = _every_pooling(checkpoint, {**overrides, 'rnn_implementation': 'unmasked'}, sequences,
                                  lengths, save=False)
        return masked, unmasked
    return outputs


@pytest.mark.parametrize('cell', [{'cell': 'lstm'}, {'cell': 'gru'},
                                  {'cell': 'gru', 'gru_reset_after': False}])
# One layer forward; two bidirectional layers, whose last is what a single bidirectional
# layer would be.
@pytest.mark.parametrize('structure', [{}, {'bidirectional': True, 'rnn_layers': 2}])
@pytest.mark.parametrize('how', pooling.POOLINGS)
def test_unmasked_gives_the_masked_outputs_for_every_length(masked_and_unmasked, cell, structure, how):
    case = f'{cell} {structure} pooling={how}'
    masked, unmasked = masked_and_unmasked(tuple(cell.items()), tuple(structure.items()))
    np.testing.assert_allclose(unmasked[how], masked[how], atol=1e-5, err_msg=case)
    _, lengths = _sequences()
    true_steps = np.arange(STEPS)[None, :] < lengths[:, None]
    np.testing.assert_allclose(unmasked['every_step'][true_steps], masked['every_step'][true_steps], atol=1e-5,
                               err_msg=case)


def test_unmasked_is_chosen_by_name_even_for_serving():
    stack_hparams = _stack_hparams({'rnn_implementation': 'unmasked', 'cell': 'gru'})
    for mode in (tf.estimator.ModeKeys.TRAIN, EVAL, tf.estimator.ModeKeys.PREDICT):
        assert recurrent.implementation(stack_hparams, mode) == 'unmasked'
