"""Runs are reproducible from their seed: the same seed builds the same weights and takes
the same training step, in one process or another, whatever else drew random numbers."""

import random

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY
from estimator_models.running import experiment

ModeKeys = tf.estimator.ModeKeys


def _checkpoints_after_one_step(data, model_dir, seed):
    """{checkpoint step: {variable name: value}} of cnn_lstm trained one step with `seed`."""
    run, train_source, _ = experiment.prepare_training('cnn_lstm', model_dir, data, None, TINY['cnn_lstm'])
    estimator = experiment.make_estimator(run, experiment.run_config(model_dir, seed=seed, checkpoint_every=1), 1)
    estimator.train(run.input_fn(train_source, ModeKeys.TRAIN, seed=seed, num_examples=32), max_steps=1)
    return {step: {name: tf.train.load_variable(f'{model_dir}/model.ckpt-{step}', name)
                   for name, _ in tf.train.list_variables(f'{model_dir}/model.ckpt-{step}')}
            for step in (0, 1)}


@pytest.fixture(scope='module')
def seed_3_checkpoints(digits_npz, tmp_path_factory):
    """The checkpoints of one run with seed 3, which the other runs are compared with."""
    return _checkpoints_after_one_step(digits_npz, str(tmp_path_factory.mktemp('seed_3')), seed=3)


def test_the_same_seed_starts_from_the_same_weights_and_takes_the_same_step(
        seed_3_checkpoints, digits_npz, tmp_path):
    # What a caller draws or seeds between two runs changes nothing: Keras takes unseeded
    # layers' seeds from Python's random, or from its own generator once seeded.
    random.random(), np.random.random()
    tf.keras.utils.set_random_seed(99)
    second = _checkpoints_after_one_step(digits_npz, str(tmp_path / 'second'), seed=3)
    for step in (0, 1):
        assert seed_3_checkpoints[step].keys() == second[step].keys()
        for name, value in seed_3_checkpoints[step].items():
            np.testing.assert_array_equal(value, second[step][name], err_msg=f'{name} at step {step}')


def test_another_seed_starts_from_other_weights_and_leaves_the_callers_random_state_alone(
        seed_3_checkpoints, digits_npz, tmp_path):
    random.seed(11)
    np.random.seed(11)
    expected = random.random(), np.random.random()
    random.seed(11)
    np.random.seed(11)
    other = _checkpoints_after_one_step(digits_npz, str(tmp_path / 'other'), seed=4)[0]
    # Seeding Keras for the run leaves the caller's own random numbers as they were.
    assert (random.random(), np.random.random()) == expected
    for name in ('cnn/cnn_conv_0/kernel', 'rnn_0/lstm_cell/recurrent_kernel', 'logits/kernel'):
        assert not np.array_equal(seed_3_checkpoints[0][name], other[name]), name


def test_checkpoints_go_by_time_unless_given_steps(tmp_path):
    timed = experiment.run_config(str(tmp_path), seed=1, checkpoint_every=None)
    assert (timed.save_checkpoints_secs, timed.save_checkpoints_steps) == (experiment.CHECKPOINT_EVERY_SECS, None)
    assert timed.save_summary_steps == experiment.SUMMARY_EVERY_STEPS
    stepped = experiment.run_config(str(tmp_path), seed=1, checkpoint_every=40)
    assert (stepped.save_checkpoints_secs, stepped.save_checkpoints_steps) == (None, 40)
    assert stepped.save_summary_steps == 40
