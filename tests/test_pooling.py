"""Pooling over the true steps (`pooling=last|mean|max|attention`): the numbers against
numpy, padding that never counts, and every option trained, exported and served alike."""

import os
from typing import NamedTuple

import numpy as np
import pytest
import tensorflow as tf

from conftest import (TINY_WITHOUT_BATCH_NORM, held_out_arrays, serve_each_in_one_fresh_process,
                      train_on_a_few_examples)
from estimator_models import run_description
from estimator_models.layers import pooling
from estimator_models.running import experiment
from estimator_models.serving import exporting
from input_fns.sources.arrays import LabelledArrays

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


TRAINED_CASES = [('temporal_cnn_lstm', 'mean'), ('temporal_cnn_lstm', 'max'), ('temporal_cnn_lstm', 'attention'),
                 ('pixel_row_lstm', 'attention'), ('cnn_lstm', 'attention')]


class Trained(NamedTuple):
    """A run trained a few steps with one pooling, and its answers on 8 held-out examples."""
    run: run_description.Run
    model_dir: str
    loss_before: float
    loss_after: float
    examples: LabelledArrays
    predicted: list
    served: dict


def serving_request(export, run, examples):
    """serve_each_in_one_fresh_process's request for in-memory `examples` as raw pixels:
    clips through predict_with_lengths, images through serving_default."""
    if run.module.KIND == 'clip':
        return export, 'predict_with_lengths', {'frames': examples.inputs.astype(np.float32),
                                                'lengths': examples.lengths.astype(np.int32)}
    return export, 'serving_default', {'image': examples.inputs.astype(np.float32)}


@pytest.fixture(scope='module')
def trained(digits_npz, clips_npz, tmp_path_factory):
    """{(model, pooling): Trained} for TRAINED_CASES, each trained 25 steps and exported;
    one fresh process serves every export, as a server that only loads SavedModels."""
    runs, requests = {}, {}
    for model, how in TRAINED_CASES:
        data = clips_npz if model == 'temporal_cnn_lstm' else digits_npz
        model_dir = str(tmp_path_factory.mktemp(f'{model}_{how}'))
        run, before, after = train_on_a_few_examples(model, data, model_dir, steps=25,
                                                     overrides=dict(TINY_WITHOUT_BATCH_NORM[model], pooling=how),
                                                     eval_events=True)
        export = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                              os.path.join(model_dir, 'export'))
        examples = held_out_arrays(run, 8)
        runs[model, how] = (run, model_dir, before, after, examples, experiment.predict(run, examples))
        requests[model, how] = serving_request(export, run, examples)
    served = serve_each_in_one_fresh_process(requests, tmp_path_factory.mktemp('served'))
    return {case: Trained(*runs[case], served[case]) for case in TRAINED_CASES}


@pytest.mark.parametrize('model, how', TRAINED_CASES)
def test_each_pooling_trains_and_serves_like_estimator_predict(model, how, trained):
    run, model_dir, before, after, examples, predicted, served = trained[model, how]
    assert after < before
    assert ('attention/0' in eval_image_tags(model_dir)) == (how == 'attention')
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
