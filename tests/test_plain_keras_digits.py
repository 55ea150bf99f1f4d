"""The plain Keras baseline (examples/plain_keras_digits.py) learns digits
and reports one accuracy line."""

import re
import subprocess
import sys

from conftest import REPO


def test_the_plain_keras_baseline_learns_digits(digits_npz):
    result = subprocess.run(
        [sys.executable, '-m', 'examples.plain_keras_digits', f'--data={digits_npz}',
         f'--eval_data={digits_npz}', '--steps=150', '--batch_size=32', '--seed=3'],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=True)
    accuracy = float(re.search(r'accuracy ([0-9.]+) on 600 examples after 150 steps', result.stdout).group(1))
    assert accuracy > 0.5
