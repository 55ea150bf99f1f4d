#!/usr/bin/env python3
"""SIGKILL-and-restart trials of bin/train: `make reliability-trials` (about 15 minutes).

Uninterrupted runs with REFERENCE_SEEDS show the noise: a resumed run reshuffles from
the step it resumes at, which is as different as another seed. Each trial starts the
seed-42 run afresh, kills it with SIGKILL at a random moment (seeded) of its expected
duration, and runs the same command again until it finishes. Checked for every trial:
its final global_step equals --train_steps, every checkpoint listed in its `checkpoint`
file loads, and its accuracy (bin/evaluate) lies within MARGIN of the references'
range. Prints one line per trial and a JSON summary; exits 1 if any check fails.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import tensorflow as tf  # noqa: E402

from input_fns.embedded import glyphs  # noqa: E402

TRAIN_STEPS = 400
REFERENCE_SEEDS = (42, 43, 44)
MARGIN = 0.02
TRAIN_ARGS = ['--model=pixel_row_lstm', '--hparams=rnn_units=32,batch_size=64',
              f'--train_steps={TRAIN_STEPS}', '--checkpoint_every=100', '--save_every_secs=2']


def write_digits(path, count=6000):
    images, labels = glyphs.render_digits(count, seed=3)
    np.savez(path, x=images, y=labels)


def train_command(data, model_dir, seed=42):
    return [sys.executable, os.path.join(REPO, 'bin', 'train'), f'--data={data}',
            f'--model_dir={model_dir}', f'--seed={seed}', *TRAIN_ARGS]


def run_to_the_end(data, model_dir, seed=42):
    """Runs bin/train to completion (or finds it complete); returns (seconds, accuracy)."""
    start = time.time()
    result = subprocess.run(train_command(data, model_dir, seed), capture_output=True, text=True,
                            timeout=1200)
    if result.returncode != 0:
        raise RuntimeError(f'bin/train failed: {result.stderr[-2000:]}')
    seconds = time.time() - start
    evaluated = subprocess.run([sys.executable, os.path.join(REPO, 'bin', 'evaluate'), f'--model_dir={model_dir}'],
                               capture_output=True, text=True, timeout=600, check=True)
    return seconds, json.loads(evaluated.stdout)['accuracy']


def killed_at(data, model_dir, seconds):
    process = subprocess.Popen(train_command(data, model_dir), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    process.wait()


def checkpoints_load(model_dir):
    """(every listed checkpoint loads, final global step)."""
    state = tf.train.get_checkpoint_state(model_dir)
    for path in state.all_model_checkpoint_paths:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    return int(tf.train.load_variable(state.model_checkpoint_path, 'global_step'))


def trial(number, data, work, reference_seconds, rng):
    model_dir = os.path.join(work, f'trial_{number}')
    # The first 70% of an uninterrupted run's time: start-up and training steps, not the
    # final evaluation and export (killing those leaves a finished run to restart).
    moment = rng.uniform(4.0, max(5.0, 0.7 * reference_seconds))
    killed_at(data, model_dir, moment)
    steps_before = checkpoints_load(model_dir) if tf.train.latest_checkpoint(model_dir) else 0
    _, accuracy = run_to_the_end(data, model_dir)
    final_step = checkpoints_load(model_dir)
    return {'trial': number, 'killed_after_seconds': round(moment, 1), 'resumed_from_step': steps_before,
            'final_step': final_step, 'accuracy': accuracy}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=10)
    parser.add_argument('--work_dir', default=os.path.join(REPO, 'runs', 'kill_trials'))
    parser.add_argument('--seed', type=int, default=0)
    options = parser.parse_args()
    shutil.rmtree(options.work_dir, ignore_errors=True)
    os.makedirs(options.work_dir)
    data = os.path.join(options.work_dir, 'digits.npz')
    write_digits(data)
    references = [run_to_the_end(data, os.path.join(options.work_dir, f'reference_{seed}'), seed)
                  for seed in REFERENCE_SEEDS]
    low, high = min(accuracy for _, accuracy in references), max(accuracy for _, accuracy in references)
    reference_seconds = references[0][0]
    print(f'uninterrupted runs (seeds {REFERENCE_SEEDS}): accuracy {low:.4f}-{high:.4f}, '
          f'{reference_seconds:.0f} s each', flush=True)
    rng = random.Random(options.seed)
    results, failures = [], []
    for number in range(options.trials):
        result = trial(number, data, options.work_dir, reference_seconds, rng)
        results.append(result)
        print(json.dumps(result), flush=True)
        if result['final_step'] != TRAIN_STEPS:
            failures.append(f'trial {number} ended at step {result["final_step"]}')
        if not low - MARGIN <= result['accuracy'] <= high + MARGIN:
            failures.append(f'trial {number} accuracy {result["accuracy"]} outside {low}-{high} +- {MARGIN}')
    accuracies = [result['accuracy'] for result in results]
    summary = {'trials': len(results), 'uninterrupted_accuracy': [accuracy for _, accuracy in references],
               'trial_accuracy_mean': float(np.mean(accuracies)), 'trial_accuracy_min': min(accuracies),
               'trial_accuracy_max': max(accuracies), 'failures': failures}
    print(json.dumps(summary))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
