"""cnn_lstm learns: its loss falls over a few dozen steps on a small batch."""

import pytest

from conftest import train_on_a_few_examples

FAST = {'rnn_units': '32', 'cnn_filters': '[16,32]', 'batch_size': '32', 'learning_rate': '0.005',
        'warmup_steps': '1', 'lr_schedule': 'constant'}


@pytest.mark.parametrize('sequence', ['rows', 'flatten'])
def test_loss_falls_on_a_small_batch(digits_npz, tmp_path, sequence):
    _, before, after = train_on_a_few_examples(
        'cnn_lstm', digits_npz, str(tmp_path), steps=40, overrides={**FAST, 'sequence': sequence})
    assert after < 0.5 * before, (before, after)
