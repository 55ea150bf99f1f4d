"""The head's training step and regularisation: gradients clipped as
tf.clip_by_global_norm clips them and a non-finite step moving nothing, label smoothing
against its formula, AdamW-style decay of kernels only, and a cnn_lstm with BatchNorm,
smoothing and decay trained and served like Estimator.predict."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, held_out_arrays, served_in_a_fresh_process, train_on_a_few_examples
from estimator_models.layers import head
from estimator_models.running import experiment
from estimator_models.serving import exporting


def in_a_graph(build):
    with tf.Graph().as_default():
        result = build()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return session.run(result)


OPTIMIZER = dict(learning_rate=0.1, warmup_steps=0, lr_schedule='constant', train_steps=10, clip_norm=1.0)


def weights_after_steps(scales, clip_by_tensorflow=False):
    """A [3] weight after one Adam step per loss scale (its loss: scale * sum(w * [3, 4, 12]),
    a gradient norm of 13 * scale), by the head's step or by tf.clip_by_global_norm and Adam."""
    with tf.Graph().as_default():
        weight = tf.compat.v1.get_variable('weight', initializer=tf.constant([1.0, -2.0, 0.5]))
        scale = tf.compat.v1.placeholder(tf.float32, [])
        loss = scale * tf.reduce_sum(weight * tf.constant([3.0, 4.0, 12.0]))
        if clip_by_tensorflow:
            optimizer = tf.compat.v1.train.AdamOptimizer(OPTIMIZER['learning_rate'])
            clipped, _ = tf.clip_by_global_norm(tf.gradients(loss, [weight]), OPTIMIZER['clip_norm'])
            train_op = optimizer.apply_gradients(zip(clipped, [weight]))
        else:
            train_op, _, _ = head._train_op(loss, OPTIMIZER)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            for value in scales:
                session.run(train_op, {scale: value})
            return session.run(weight)


def test_train_step_clips_as_tensorflow_does_and_a_non_finite_step_moves_nothing():
    scales = [1.0, 0.01, 2.0]
    np.testing.assert_array_equal(weights_after_steps(scales), weights_after_steps(scales, clip_by_tensorflow=True))
    np.testing.assert_array_equal(weights_after_steps([np.inf]), [1.0, -2.0, 0.5])
    np.testing.assert_array_equal(weights_after_steps([np.nan]), [1.0, -2.0, 0.5])


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_label_smoothing_is_cross_entropy_against_softened_targets(smoothing):
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    loss = in_a_graph(lambda: head.cross_entropy(tf.constant(labels), tf.constant(logits), smoothing))
    targets = np.full((5, 4), smoothing / 4) + np.eye(4)[labels] * (1 - smoothing)
    log_probabilities = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-(targets * log_probabilities).sum(axis=1).mean(), rel=1e-5)


def test_weight_decay_shrinks_kernels_by_rate_times_decay_and_leaves_biases():
    def build():
        kernel = tf.compat.v1.get_variable('kernel', initializer=tf.fill([2, 3], 2.0))
        bias = tf.compat.v1.get_variable('bias', initializer=tf.fill([3], 2.0))
        skipped = tf.compat.v1.get_variable('skipped', initializer=tf.fill([2, 2], 2.0))
        with tf.control_dependencies([head.decoupled_weight_decay([kernel, bias], [0.1, 0.1], 0.5),
                                      head.decoupled_weight_decay([skipped], [0.1], 0.5, finite=False)]):
            return [tf.identity(kernel), tf.identity(bias), tf.identity(skipped)]
    kernel, bias, skipped = in_a_graph(build)
    np.testing.assert_allclose(kernel, 2.0 * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(bias, 2.0)
    np.testing.assert_array_equal(skipped, 2.0)


def test_batch_norm_smoothing_and_decay_train_and_serve_like_predict(digits_npz, tmp_path):
    model_dir = str(tmp_path / 'run')
    overrides = dict(TINY['cnn_lstm'], cnn_batch_norm='true', label_smoothing='0.1', weight_decay='0.01')
    run, before, after = train_on_a_few_examples('cnn_lstm', digits_npz, model_dir, steps=25,
                                                 overrides=overrides)
    assert after < before
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    assert np.abs(reader.get_tensor('cnn/cnn_batch_norm_0/moving_mean')).max() > 0
    export = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                          os.path.join(model_dir, 'export'))
    examples = held_out_arrays(run, 8)
    predicted = np.stack([row['probabilities'] for row in experiment.predict(run, examples)])
    np.testing.assert_allclose(served_in_a_fresh_process(export, run, examples, tmp_path)['probabilities'], predicted,
                               atol=1e-5)


def test_weight_decay_trains_a_model_without_a_backbone(digits_npz, tmp_path):
    _, before, after = train_on_a_few_examples('pixel_row_lstm', digits_npz, str(tmp_path / 'run'), steps=20,
                                               overrides=dict(TINY['pixel_row_lstm'], weight_decay='0.01'))
    assert after < before
