"""Preemption, for real: bin/train in a subprocess, stopped by real signals.

SIGTERM and Ctrl-C (SIGINT) leave a checkpoint at the step reached and a non-zero exit
that says so; a second signal exits at once; SIGKILL loses at most --save_every_secs of
work, and the restarted run finishes. (`make reliability-trials` runs ten SIGKILL trials
at random moments; this is one.)"""

import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from conftest import REPO, run_cli

TRAIN_ARGS = ['--model=pixel_row_lstm', '--hparams=rnn_units=16,batch_size=16', '--checkpoint_every=100000']


def _start_training(data, model_dir, *extra):
    """bin/train as a child process with its stdout and stderr in files."""
    stdout, stderr = open(f'{model_dir}.out', 'w'), open(f'{model_dir}.err', 'w')
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'bin', 'train'), f'--data={data}', f'--model_dir={model_dir}',
         *TRAIN_ARGS, *extra], stdout=stdout, stderr=stderr)
    return process, f'{model_dir}.out', f'{model_dir}.err'


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f'timed out waiting for {what}')


def _text(path):
    with open(path) as stream:
        return stream.read()


def _checkpoint_steps(model_dir):
    state = tf.train.get_checkpoint_state(model_dir)
    paths = state.all_model_checkpoint_paths if state else []
    return [int(tf.train.load_variable(path, 'global_step')) for path in paths]


@pytest.mark.parametrize('signal_number', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_at_the_step_reached(signal_number, digits_npz, tmp_path):
    model_dir = str(tmp_path / 'run')
    process, out, err = _start_training(digits_npz, model_dir, '--train_steps=100000', '--save_every_secs=0')
    _wait_for(lambda: 'step 1/100000' in _text(out), 120, 'the first training step')
    time.sleep(2.0)
    process.send_signal(signal_number)
    assert process.wait(timeout=120) == 128 + signal_number
    last_line = _text(err).strip().splitlines()[-1]
    name = signal.Signals(signal_number).name
    assert last_line.startswith(f'error: stopped by {name} at step ')
    assert last_line.endswith('; run the same command again to resume')
    step = int(last_line.split(' at step ')[1].split(';')[0])
    assert step > 1
    # The checkpoint is at the step it names, listed, and loads.
    assert _checkpoint_steps(model_dir)[-1] == step
    assert f'checkpoint saved: {os.path.join(model_dir, f"model.ckpt-{step}")}' in last_line


SECOND_SIGNAL = '''
import os, signal, sys, time
from estimator_models.running import preemption
with preemption.SignalWatch() as watch:
    os.kill(os.getpid(), signal.SIGTERM)
    assert watch.received == signal.SIGTERM
    print('first signal recorded', flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
'''


def test_a_second_signal_exits_at_once():
    start = time.time()
    result = subprocess.run([sys.executable, '-c', SECOND_SIGNAL], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 128 + signal.SIGTERM
    assert result.stdout == 'first signal recorded\n'
    assert 'SIGTERM again: exiting now' in result.stderr
    assert time.time() - start < 30


def test_sigkill_loses_at_most_the_time_between_checkpoints_and_a_restart_finishes(digits_npz, tmp_path):
    model_dir = str(tmp_path / 'run')
    process, out, _ = _start_training(digits_npz, model_dir, '--train_steps=100000', '--save_every_secs=1')
    _wait_for(lambda: max(_checkpoint_steps(model_dir) or [0]) > 0, 180, 'a checkpoint saved by time')
    process.kill()
    process.wait(timeout=60)
    saved = _checkpoint_steps(model_dir)
    assert max(saved) > 0
    resumed_to = max(saved) + 20
    result = run_cli('train', f'--data={digits_npz}', f'--model_dir={model_dir}', *TRAIN_ARGS,
                     f'--train_steps={resumed_to}')
    assert 'done: accuracy' in result.stdout
    assert f'at step {resumed_to}' in result.stdout
    assert all(step <= resumed_to for step in _checkpoint_steps(model_dir))
    assert _checkpoint_steps(model_dir)[-1] == resumed_to
