"""Pooling over the true steps (`pooling=last|mean|max|attention`): the numbers against
numpy, padding that never counts, and every option trained, exported and served alike."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_WITHOUT_BATCH_NORM, held_out_arrays, served_in_a_fresh_process, train_on_a_few_examples
from estimator_models.layers import pooling
from estimator_models.running import experiment
from estimator_models.serving import exporting

LENGTHS = np.array([5, 2, 1, 3], np.int32)


def pooled(outputs, lengths, how):
    with tf.Graph().as_default():
        tf.keras.utils.set_random_seed(1)
        mask = tf.sequence_mask(lengths, maxlen=outputs.shape[1])
        result, weights = pooling.pool_steps(tf.constant(outputs), mask, how, attention_units=8)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return session.run([result, weights if weights is not None else tf.constant(0.0)])


def test_mean_and_max_count_only_the_true_steps():
    outputs = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)
    mean, _ = pooled(outputs, LENGTHS, 'mean')
    maximum, _ = pooled(outputs, LENGTHS, 'max')
    for row, length in enumerate(LENGTHS):
        np.testing.assert_allclose(mean[row], outputs[row, :length].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(maximum[row], outputs[row, :length].max(axis=0))


def test_attention_weights_are_zero_on_padding_and_sum_to_one():
    outputs = np.random.default_rng(1).normal(size=(4, 5, 3)).astype(np.float32)
    result, weights = pooled(outputs, LENGTHS, 'attention')
    for row, length in enumerate(LENGTHS):
        assert np.all(weights[row, length:] == 0.0)
        assert np.all(weights[row, :length] > 0.0)
        np.testing.assert_allclose(weights[row].sum(), 1.0, rtol=1e-6)
        np.testing.assert_allclose(result[row], weights[row] @ outputs[row], rtol=1e-5)


@pytest.mark.parametrize('how', ['mean', 'max', 'attention'])
def test_what_lies_in_the_padding_never_changes_the_result(how):
    outputs = np.random.default_rng(2).normal(size=(4, 5, 3)).astype(np.float32)
    noisy = outputs.copy()
    for row, length in enumerate(LENGTHS):
        noisy[row, length:] = 1e3
    np.testing.assert_allclose(pooled(noisy, LENGTHS, how)[0], pooled(outputs, LENGTHS, how)[0], rtol=1e-6)


def eval_image_tags(model_dir):
    tags = set()
    for path in tf.io.gfile.glob(os.path.join(model_dir, 'eval', 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value if value.HasField('image'))
    return tags



@pytest.mark.parametrize('model, how', [
    ('temporal_cnn_lstm', 'mean'), ('temporal_cnn_lstm', 'max'), ('temporal_cnn_lstm', 'attention'),
    ('pixel_row_lstm', 'attention'), ('cnn_lstm', 'attention')])
def test_each_pooling_trains_and_serves_like_estimator_predict(model, how, digits_npz, clips_npz, tmp_path):
    data = clips_npz if model == 'temporal_cnn_lstm' else digits_npz
    model_dir = str(tmp_path / 'run')
    run, before, after = train_on_a_few_examples(model, data, model_dir, steps=25,
                                                 overrides=dict(TINY_WITHOUT_BATCH_NORM[model], pooling=how))
    assert after < before
    assert ('attention/0' in eval_image_tags(model_dir)) == (how == 'attention')
    export = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                          os.path.join(model_dir, 'export'))
    examples = held_out_arrays(run, 8)
    served = served_in_a_fresh_process(export, run, examples, tmp_path)
    predicted = experiment.predict(run, examples)
    np.testing.assert_allclose(served['probabilities'], np.stack([row['probabilities'] for row in predicted]),
                               atol=1e-5)
    if how != 'attention':
        assert 'attention' not in served
        return
    steps = served['attention'].shape[1]
    expected = np.stack([np.pad(row['attention'], (0, steps - len(row['attention']))) for row in predicted])
    np.testing.assert_allclose(served['attention'], expected, atol=1e-5)
    np.testing.assert_allclose(served['attention'].sum(axis=1), 1.0, rtol=1e-5)
    if run.module.KIND == 'clip':
        for row, length in enumerate(examples.lengths):
            assert np.all(served['attention'][row, length:] == 0.0)
