"""Warm start, as a user moving from TF1 code does it: a plain TF1 model_fn
(examples/legacy_pixel_rnn.py: LSTMCell or GRUCell + dynamic_rnn + dense) trains a few
steps, and pixel_row_lstm starts from its checkpoint with the same logits; a cnn_lstm's
CNN starts temporal_cnn_lstm's; and the project's checkpoints read back with a plain Saver."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, TINY_WITHOUT_BATCH_NORM, held_out_arrays, run_cli
from estimator_models.errors import UserError
from estimator_models.running import experiment

LEGACY = 'examples.legacy_pixel_rnn:model_fn'
ModeKeys = tf.estimator.ModeKeys
STEPS = 60


def _trained(model, data, model_dir, steps, overrides):
    """The run of `model` trained `steps` steps on the first 32 examples of `data`, its
    checkpoint in model_dir (no evaluation: the runs here are only started from)."""
    run, train_source, _ = experiment.prepare_training(model, model_dir, data, None, overrides)
    estimator = experiment.make_estimator(
        run, experiment.run_config(model_dir, seed=1, checkpoint_every=steps), train_steps=steps)
    estimator.train(run.input_fn(train_source, ModeKeys.TRAIN, seed=1, num_examples=32), max_steps=steps)
    return run


def _legacy_run(tmp_path_factory, digits_npz, cell):
    model_dir = str(tmp_path_factory.mktemp(f'legacy_{cell}'))
    return _trained(LEGACY, digits_npz, model_dir, 5, {'cell': cell, 'rnn_units': '16', 'batch_size': '16'})


@pytest.fixture(scope='module')
def legacy_lstm(tmp_path_factory, digits_npz):
    return _legacy_run(tmp_path_factory, digits_npz, 'lstm')


@pytest.fixture(scope='module')
def legacy_gru(tmp_path_factory, digits_npz):
    return _legacy_run(tmp_path_factory, digits_npz, 'gru')


def _warm_started(model, source_dir, data, model_dir, overrides, regex='.*', steps=STEPS):
    """Trains `model` `steps` steps from `source_dir`'s checkpoint, on 32 examples; model.ckpt-0
    holds the warm-started weights. Returns (run, estimator, eval input on those examples)."""
    run, train_source, _ = experiment.prepare_training(model, model_dir, data, None, overrides)
    warm, report = experiment.warm_start_settings(run, source_dir, regex)
    assert report[-1].startswith('warm start from ')
    estimator = experiment.make_estimator(
        run, experiment.run_config(model_dir, seed=1, checkpoint_every=steps), steps, warm)
    estimator.train(run.input_fn(train_source, ModeKeys.TRAIN, seed=1, num_examples=32), max_steps=steps)
    return run, estimator, run.input_fn(train_source, ModeKeys.EVAL, num_examples=32)


def _logits(estimator, run, examples, checkpoint=None):
    return np.stack([row['logits'] for row in estimator.predict(
        run.input_fn(examples, ModeKeys.PREDICT), checkpoint_path=checkpoint)])


@pytest.mark.parametrize('cell, extra', [('lstm', {}), ('gru', {'gru_reset_after': 'false'})])
def test_pixel_row_lstm_starts_from_a_tf1_cell_with_its_logits_then_learns(
        request, cell, extra, digits_npz, tmp_path):
    legacy = request.getfixturevalue(f'legacy_{cell}')
    overrides = {'cell': cell, 'rnn_units': '16', 'batch_size': '16', 'learning_rate': '0.01',
                 'warmup_steps': '1', 'augment': 'none', **extra}
    run, estimator, eval_input = _warm_started('pixel_row_lstm', legacy.model_dir, digits_npz,
                                               str(tmp_path), overrides)
    examples = held_out_arrays(run, 16)
    first = os.path.join(str(tmp_path), 'model.ckpt-0')
    np.testing.assert_allclose(_logits(estimator, run, examples, first),
                               _logits(experiment.make_estimator(legacy), legacy, examples), atol=1e-5)
    assert os.path.exists(os.path.join(str(tmp_path), 'warm_start', 'converted.index'))
    before = estimator.evaluate(eval_input, checkpoint_path=first)['loss']
    assert estimator.evaluate(eval_input)['loss'] < before * 0.8


def test_a_gru_cell_into_keras_default_gru_says_which_hparam_fits(legacy_gru, digits_npz, tmp_path):
    run, _, _ = experiment.prepare_training('pixel_row_lstm', str(tmp_path), digits_npz, None,
                                            {'cell': 'gru', 'rnn_units': '16'})
    with pytest.raises(UserError, match='shapes do not fit.*rnn_0/gru_cell/bias.*gru_reset_after=false'):
        experiment.warm_start_settings(run, legacy_gru.model_dir)


def test_temporal_cnn_lstm_starts_with_the_cnn_of_a_cnn_lstm_run(digits_npz, clips_npz, tmp_path):
    cnn_dir = str(tmp_path / 'cnn_lstm')
    # A CNN without BatchNorm on both sides: the clip model takes its kernels and biases.
    _trained('cnn_lstm', digits_npz, cnn_dir, 3, TINY_WITHOUT_BATCH_NORM['cnn_lstm'])
    overrides = {**TINY['temporal_cnn_lstm'], 'frame_differences': 'false', 'cnn_filters': '[8,16]'}
    # One step: model.ckpt-0, the weights it started from, is what is checked.
    _warm_started('temporal_cnn_lstm', cnn_dir, clips_npz, str(tmp_path / 'temporal'), overrides, 'cnn/', steps=1)
    source, started = tf.train.latest_checkpoint(cnn_dir), str(tmp_path / 'temporal' / 'model.ckpt-0')
    for name in ('cnn/cnn_conv_0/kernel', 'cnn/cnn_conv_0/bias', 'cnn/cnn_conv_1/kernel', 'cnn/cnn_conv_1/bias'):
        np.testing.assert_array_equal(tf.train.load_variable(started, name), tf.train.load_variable(source, name))
    # The recurrent layer was not selected: it starts from its initializer.
    assert not np.array_equal(tf.train.load_variable(started, 'rnn_0/lstm_cell/recurrent_kernel')[:16, :16],
                              tf.train.load_variable(source, 'rnn_0/lstm_cell/recurrent_kernel')[:16, :16])


def test_variables_that_do_not_fit_are_one_error_listing_them(legacy_lstm, digits_npz, tmp_path):
    run, _, _ = experiment.prepare_training('pixel_row_lstm', str(tmp_path), digits_npz, None,
                                            {'rnn_units': '32'})
    with pytest.raises(UserError, match=r'logits/kernel \[16, 10\] vs \[32, 10\]; rnn_0/lstm_cell/bias'):
        experiment.warm_start_settings(run, legacy_lstm.model_dir)
    result = run_cli('train', '--model=pixel_row_lstm', f'--data={digits_npz}',
                     f'--model_dir={tmp_path / "run"}', f'--warm_start_from={tmp_path / "nothing"}', check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'error: --warm_start_from={tmp_path / "nothing"}: no such checkpoint or model_dir']


def test_a_plain_saver_restores_a_project_checkpoint_by_the_listed_names(digits_export):
    run, _, _ = digits_export  # a pixel_row_lstm of TINY's sizes: read here, not written
    listing = run_cli('export', f'--model_dir={run.model_dir}', '--list_variables').stdout.splitlines()
    checkpoint = listing[0].lstrip('# ')
    variables = [line.split('\t') for line in listing[1:]]
    assert ['rnn_0/lstm_cell/kernel', '[28, 64]', 'float32'] in variables
    # TF1 tooling that knows nothing of this project: variables by name, a Saver, restore.
    with tf.Graph().as_default():
        restored = {name: tf.compat.v1.get_variable(name, json.loads(shape), getattr(tf, dtype))
                    for name, shape, dtype in variables if 'Adam' not in name and 'power' not in name}
        saver = tf.compat.v1.train.Saver(restored)
        with tf.compat.v1.Session() as session:
            saver.restore(session, checkpoint)
            values = session.run(restored)
    for name, value in values.items():
        np.testing.assert_array_equal(value, tf.train.load_variable(checkpoint, name))
