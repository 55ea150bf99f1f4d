"""cnn_lstm learns: its loss falls over a few dozen steps on a small batch; its feature
map is read by rows, columns or positions, every step-th of them."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import held_out_arrays, train_on_a_few_examples
from estimator_models.running import experiment

# No BatchNorm: its moving statistics (momentum 0.99), which evaluation uses, trail a
# 40-step run far behind its weights (tests/test_head.py trains and serves BatchNorm).
FAST = {'rnn_units': '32', 'cnn_filters': '[16,32]', 'batch_size': '32', 'learning_rate': '0.005',
        'warmup_steps': '1', 'lr_schedule': 'constant', 'augment': 'none', 'cnn_batch_norm': 'false'}


@pytest.mark.parametrize('sequence', ['rows', 'flatten'])
def test_loss_falls_on_a_small_batch(digits_npz, tmp_path, sequence):
    _, before, after = train_on_a_few_examples(
        'cnn_lstm', digits_npz, str(tmp_path), steps=40, overrides={**FAST, 'sequence': sequence})
    assert after < 0.5 * before, (before, after)


def _trained_two_steps(digits_npz, model_dir, overrides):
    """A run of cnn_lstm trained two steps on 32 digits, its checkpoint in model_dir, for
    predictions (no evaluation: nothing here reads the loss)."""
    run, train_source, _ = experiment.prepare_training('cnn_lstm', model_dir, digits_npz, None, overrides)
    estimator = experiment.make_estimator(run, experiment.run_config(model_dir, seed=1, checkpoint_every=2),
                                          train_steps=2)
    estimator.train(run.input_fn(train_source, tf.estimator.ModeKeys.TRAIN, seed=1, num_examples=32),
                    max_steps=2)
    return run


@pytest.mark.parametrize('sequence, step, steps_read', [('columns', 2, 4), ('rows', 3, 3), ('flatten', 5, 10)])
def test_every_step_th_row_column_or_position_is_a_time_step(digits_npz, tmp_path, sequence, step, steps_read):
    # 28x28 digits through two conv + 2x2 pool blocks: a 7x7 feature map, 49 positions.
    overrides = {**FAST, 'sequence': sequence, 'step': str(step), 'pooling': 'attention'}
    run = _trained_two_steps(digits_npz, str(tmp_path), overrides)
    (prediction,) = experiment.predict(run, held_out_arrays(run, 1))
    assert prediction['attention'].shape == (steps_read,)
    np.testing.assert_allclose(prediction['attention'].sum(), 1.0, rtol=1e-5)
