"""pixel_row_lstm learns: its loss falls over a few dozen steps on a small batch."""

import pytest

from conftest import train_on_a_few_examples

FAST = {'rnn_units': '32', 'batch_size': '32', 'learning_rate': '0.01',
        'warmup_steps': '1', 'lr_schedule': 'constant'}


@pytest.mark.parametrize('scan', ['rows', 'columns'])
def test_loss_falls_on_a_small_batch(digits_npz, tmp_path, scan):
    _, before, after = train_on_a_few_examples(
        'pixel_row_lstm', digits_npz, str(tmp_path), steps=40, overrides={**FAST, 'scan': scan})
    assert after < 0.5 * before, (before, after)
