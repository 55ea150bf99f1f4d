"""cnn_lstm learns: its loss falls over a few dozen steps on a small batch; its feature
map is read by rows, columns or positions, every step-th of them."""

import numpy as np
import pytest

from conftest import held_out_arrays, train_on_a_few_examples, train_without_evaluating
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


@pytest.mark.parametrize('sequence, step, steps_read', [('columns', 2, 4), ('rows', 3, 3), ('flatten', 5, 10)])
def test_every_step_th_row_column_or_position_is_a_time_step(digits_npz, tmp_path, sequence, step, steps_read):
    # 28x28 digits through two conv + 2x2 pool blocks: a 7x7 feature map, 49 positions.
    overrides = {**FAST, 'sequence': sequence, 'step': str(step), 'pooling': 'attention'}
    run = train_without_evaluating('cnn_lstm', digits_npz, str(tmp_path), overrides, steps=2, num_examples=32)
    (prediction,) = experiment.predict(run, held_out_arrays(run, 1))
    assert prediction['attention'].shape == (steps_read,)
    np.testing.assert_allclose(prediction['attention'].sum(), 1.0, rtol=1e-5)
