"""The unmasked recurrent stack (the form ONNX exports convert) answers exactly as the
masked one for the same weights: every cell, direction, depth and pooling, every length."""

import numpy as np
import pytest
import tensorflow as tf

from estimator_models.layers import recurrent
from estimator_models.running import hparams

EVAL = tf.estimator.ModeKeys.EVAL
STEPS = 7


def _stack_hparams(overrides):
    return {**hparams.COMMON_DEFAULTS, 'rnn_units': 6, 'attention_units': 5, **overrides}


def _pooled(checkpoint, overrides, sequences, lengths, save):
    """The pooled stack's outputs [B, U] and its last layer's outputs at every step
    [B, T, U], from weights saved to (or, without `save`, restored from) `checkpoint`."""
    stack_hparams = _stack_hparams(overrides)
    with tf.Graph().as_default():
        inputs, lengths_tensor = tf.constant(sequences), tf.constant(lengths)
        with tf.compat.v1.variable_scope('model'):
            pooled, _ = recurrent.pooled_recurrent_stack(inputs, stack_hparams, EVAL, lengths_tensor)
        with tf.compat.v1.variable_scope('model', reuse=True):
            every_step = recurrent.recurrent_stack(inputs, stack_hparams, EVAL, lengths_tensor,
                                                   return_sequences=True)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            if save:
                session.run(tf.compat.v1.global_variables_initializer())
                for variable in tf.compat.v1.global_variables():
                    if 'bias' in variable.name:  # non-zero, so a bias mix-up cannot hide
                        session.run(variable.assign(np.random.default_rng(1).normal(
                            size=variable.shape).astype(np.float32)))
                saver.save(session, checkpoint)
            else:
                saver.restore(session, checkpoint)
            return session.run([pooled, every_step])


@pytest.mark.parametrize('cell', [{'cell': 'lstm'}, {'cell': 'gru'},
                                  {'cell': 'gru', 'gru_reset_after': False}])
@pytest.mark.parametrize('structure', [{}, {'bidirectional': True},
                                       {'bidirectional': True, 'rnn_layers': 2}])
@pytest.mark.parametrize('pooling', ['last', 'mean', 'max', 'attention'])
def test_unmasked_gives_the_masked_outputs_for_every_length(tmp_path, cell, structure, pooling):
    rng = np.random.default_rng(0)
    lengths = np.arange(1, STEPS + 1, dtype=np.int32)                  # every length 1..T
    sequences = rng.normal(size=(STEPS, STEPS, 4)).astype(np.float32)
    for row, length in enumerate(lengths):
        sequences[row, length:] = 1e3                                    # padding no true step may see
    overrides = {**cell, **structure, 'pooling': pooling}
    checkpoint = str(tmp_path / 'keras')
    masked = _pooled(checkpoint, {**overrides, 'rnn_implementation': 'keras'}, sequences, lengths, True)
    unmasked = _pooled(checkpoint, {**overrides, 'rnn_implementation': 'unmasked'}, sequences, lengths, False)
    np.testing.assert_allclose(unmasked[0], masked[0], atol=1e-5)
    true_steps = np.arange(STEPS)[None, :] < lengths[:, None]
    np.testing.assert_allclose(unmasked[1][true_steps], masked[1][true_steps], atol=1e-5)


def test_unmasked_is_chosen_by_name_even_for_serving():
    stack_hparams = _stack_hparams({'rnn_implementation': 'unmasked', 'cell': 'gru'})
    for mode in (tf.estimator.ModeKeys.TRAIN, EVAL, tf.estimator.ModeKeys.PREDICT):
        assert recurrent.implementation(stack_hparams, mode) == 'unmasked'
