"""A model_dir's integrity (estimator_models.running.run_directory): one trainer at a time,
a killed trainer's model_dir free at once, bin/evaluate and bin/export usable beside a
trainer, runs that resume past a damaged newest checkpoint, and the lease that stands in
for a file lock where there is none."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, run_cli, user_environment
from estimator_models.running import monitoring, run_directory
from estimator_models.serving import exporting

HPARAMS = '--hparams=rnn_units=16,batch_size=16'


def _train_args(data, model_dir, train_steps, checkpoint_every=10):
    return ['--model=pixel_row_lstm', f'--data={data}', f'--model_dir={model_dir}', HPARAMS,
            f'--train_steps={train_steps}', f'--checkpoint_every={checkpoint_every}']


def _start_training(data, model_dir, train_steps):
    """bin/train in a process of its own, its output in files beside model_dir."""
    with open(f'{model_dir}.out', 'w') as out, open(f'{model_dir}.err', 'w') as err:
        return subprocess.Popen([sys.executable, os.path.join(REPO, 'bin', 'train'),
                                 *_train_args(data, model_dir, train_steps)],
                                stdout=out, stderr=err, env=user_environment())


def _wait_until_it_holds(process, model_dir, timeout=120):
    """Polls until `process` has recorded itself in model_dir's lock file, which it does
    once it holds the lock."""
    deadline = time.time() + timeout
    while run_directory.recorded_holder(model_dir).get('pid') != process.pid:
        assert process.poll() is None, f'bin/train ended ({process.returncode}) before it held the lock'
        assert time.time() < deadline, 'bin/train never held the lock'
        time.sleep(0.1)


def _checkpoint_steps(model_dir):
    """The global steps of the checkpoints the state file lists, oldest first."""
    state = tf.train.get_checkpoint_state(model_dir)
    return [int(tf.train.load_variable(path, 'global_step')) for path in state.all_model_checkpoint_paths]


def _one_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory, digits_npz):
    """A model_dir trained 20 steps: checkpoints at steps 0, 10 and 20."""
    model_dir = str(tmp_path_factory.mktemp('trained') / 'run')
    run_cli('train', *_train_args(digits_npz, model_dir, 20))
    assert _checkpoint_steps(model_dir) == [0, 10, 20]
    return model_dir


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained model_dir for one test to damage."""
    return shutil.copytree(trained, str(tmp_path / 'run'))


def _cut_to_half(checkpoint):
    """Truncates the data file of a checkpoint (a path prefix) to half its size, as an
    interrupted copy leaves it; returns its path."""
    [data_file] = glob.glob(f'{checkpoint}.data-*')
    os.truncate(data_file, os.path.getsize(data_file) // 2)
    return data_file


def test_a_second_trainer_on_a_model_dir_stops_naming_the_first(digits_npz, tmp_path):
    model_dir = str(tmp_path / 'run')
    first = _start_training(digits_npz, model_dir, 20)
    _wait_until_it_holds(first, model_dir)
    second_export_dir = tmp_path / 'second_export'
    second = run_cli('train', *_train_args(digits_npz, model_dir, 20), f'--export_dir={second_export_dir}',
                     check=False)
    assert second.returncode == 2
    line = _one_line(second.stderr)
    assert line.startswith(f'error: {model_dir} is in use by another trainer: '
                           f'pid {first.pid} on {socket.gethostname()}, since ')
    assert os.path.join(model_dir, run_directory.LOCK_FILE) in line
    assert second.stdout == ''
    assert not second_export_dir.exists()

    assert first.wait(timeout=600) == 0, open(f'{model_dir}.err').read()
    # The first trainer's alone: its training events and its session for the HParams tab.
    assert len(glob.glob(os.path.join(model_dir, 'events.out.tfevents.*'))) == 2
    assert len(monitoring.hparams_event_files(model_dir)) == 1
    assert _checkpoint_steps(model_dir) == [0, 10, 20]
    assert run_directory.recorded_holder(model_dir) == {}  # released


def test_a_killed_trainers_model_dir_is_trained_again_at_once(digits_npz, tmp_path):
    model_dir = str(tmp_path / 'run')
    killed = _start_training(digits_npz, model_dir, 20)
    _wait_until_it_holds(killed, model_dir)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    # Its record stays in the file, but the operating system released its lock.
    assert run_directory.recorded_holder(model_dir)['pid'] == killed.pid
    result = run_cli('train', *_train_args(digits_npz, model_dir, 10))
    assert 'done: accuracy' in result.stdout and 'at step 10' in result.stdout


def test_evaluate_and_export_run_while_a_trainer_holds_the_model_dir(run_copy, tmp_path):
    with run_directory.trainer_lock(run_copy):
        evaluated = run_cli('evaluate', f'--model_dir={run_copy}')
        exported = run_cli('export', f'--model_dir={run_copy}', f'--export_dir={tmp_path / "exports"}')
    assert json.loads(evaluated.stdout)['global_step'] == 20
    assert os.path.isdir(exported.stdout.strip())


def test_beside_a_trainer_a_damaged_checkpoint_is_skipped_and_left_in_place(run_copy):
    data_file = _cut_to_half(os.path.join(run_copy, 'model.ckpt-20'))
    with run_directory.trainer_lock(run_copy):
        result = run_cli('evaluate', f'--model_dir={run_copy}')
    assert json.loads(result.stdout)['global_step'] == 10
    assert (f'checkpoint {run_copy}/model.ckpt-20 is damaged (Read less bytes than requested); left in '
            f'place while pid {os.getpid()} on {socket.gethostname()}') in result.stderr
    assert os.path.exists(data_file)
    assert _checkpoint_steps(run_copy)[-1] == 20  # the trainer's state file as it was


def _assert_moved_aside(model_dir, stderr):
    """The damaged model.ckpt-20 is in model_dir/damaged/, and one line says so."""
    damaged = os.path.join(model_dir, 'damaged')
    names = ['model.ckpt-20.data-00000-of-00001', 'model.ckpt-20.index', 'model.ckpt-20.meta']
    assert sorted(os.listdir(damaged)) == names
    assert (f'checkpoint {model_dir}/model.ckpt-20 is damaged (Read less bytes than requested): '
            f'moved {", ".join(names)} to {damaged}; going on from {model_dir}/model.ckpt-10\n') in stderr


def test_train_resumes_from_the_checkpoint_before_a_damaged_one(run_copy, digits_npz):
    _cut_to_half(os.path.join(run_copy, 'model.ckpt-20'))
    result = run_cli('train', *_train_args(digits_npz, run_copy, 30))
    _assert_moved_aside(run_copy, result.stderr)
    assert 'done: accuracy' in result.stdout and 'at step 30' in result.stdout
    # Steps 10 to 30 trained again from model.ckpt-10; every listed checkpoint loads.
    assert _checkpoint_steps(run_copy) == [10, 20, 30]


def test_evaluate_reads_the_checkpoint_before_a_damaged_one(run_copy):
    _cut_to_half(os.path.join(run_copy, 'model.ckpt-20'))
    result = run_cli('evaluate', f'--model_dir={run_copy}')
    _assert_moved_aside(run_copy, result.stderr)
    assert json.loads(result.stdout)['global_step'] == 10
    assert _checkpoint_steps(run_copy) == [0, 10]


def test_export_reads_the_checkpoint_before_a_damaged_one(run_copy, tmp_path):
    _cut_to_half(os.path.join(run_copy, 'model.ckpt-20'))
    result = run_cli('export', f'--model_dir={run_copy}', f'--export_dir={tmp_path / "exports"}')
    _assert_moved_aside(run_copy, result.stderr)
    exported = tf.train.load_checkpoint(os.path.join(result.stdout.strip(), 'variables', 'variables'))
    step_10 = tf.train.load_checkpoint(os.path.join(run_copy, 'model.ckpt-10'))
    for name in exported.get_variable_to_shape_map():
        np.testing.assert_array_equal(exported.get_tensor(name), step_10.get_tensor(name))


@pytest.mark.parametrize('state_file', ['deleted', 'garbled'])
def test_a_lost_state_file_is_rebuilt_from_the_checkpoints_present(state_file, run_copy):
    state_path = os.path.join(run_copy, 'checkpoint')
    if state_file == 'deleted':
        os.remove(state_path)
    else:
        with open(state_path, 'w') as stream:
            stream.write('model_checkpoint_path: "model.ckpt-')
    result = run_cli('evaluate', f'--model_dir={run_copy}')
    problem = 'is missing' if state_file == 'deleted' else 'is unreadable'
    assert (f'{state_path} {problem}: rebuilt it from the checkpoints present, listing '
            'model.ckpt-0, model.ckpt-10, model.ckpt-20') in result.stderr
    assert json.loads(result.stdout)['global_step'] == 20
    assert _checkpoint_steps(run_copy) == [0, 10, 20]


@pytest.mark.parametrize('command', ['train', 'evaluate'])
def test_without_an_intact_checkpoint_the_run_stops_naming_the_files(command, run_copy, digits_npz):
    for step in (0, 10, 20):
        _cut_to_half(os.path.join(run_copy, f'model.ckpt-{step}'))
    args = _train_args(digits_npz, run_copy, 30) if command == 'train' else [f'--model_dir={run_copy}']
    result = run_cli(command, *args, check=False)
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith(f'error: no intact checkpoint left in {run_copy} (model.ckpt-20: Read less bytes '
                           'than requested; model.ckpt-10: ')
    for step in (0, 10, 20):
        assert f'model.ckpt-{step}.data-00000-of-00001, model.ckpt-{step}.index' in line
    # The files and the state file stay as they were.
    assert not os.path.exists(os.path.join(run_copy, 'damaged'))
    assert tf.train.latest_checkpoint(run_copy) == os.path.join(run_copy, 'model.ckpt-20')


def _lease_of_another_machine(model_dir, heartbeat_age):
    with open(os.path.join(model_dir, run_directory.LEASE_FILE), 'w') as stream:
        json.dump({'host': 'elsewhere', 'pid': 4242, 'since': '2030-01-01 12:00:00+00:00',
                   'heartbeat': time.time() - heartbeat_age}, stream)


def test_a_fresh_lease_refuses_a_second_trainer(tmp_path):
    _lease_of_another_machine(str(tmp_path), heartbeat_age=10)
    with pytest.raises(run_directory.TrainerRunning) as refused:
        with run_directory.trainer_lock(str(tmp_path), lease=True):
            pass
    assert 'in use by another trainer: pid 4242 on elsewhere, since 2030-01-01 12:00:00+00:00' in str(refused.value)
    assert run_directory.recorded_holder(str(tmp_path), lease=True)['pid'] == 4242


def test_a_stale_lease_is_taken_over_and_given_back(tmp_path, capsys):
    model_dir = str(tmp_path)
    _lease_of_another_machine(model_dir, heartbeat_age=run_directory.LEASE_TIMEOUT_SECS + 60)
    with run_directory.trainer_lock(model_dir, lease=True):
        assert run_directory.recorded_holder(model_dir, lease=True)['pid'] == os.getpid()
        with pytest.raises(run_directory.TrainerRunning):
            with run_directory.trainer_lock(model_dir, lease=True):
                pass
    assert 'from pid 4242 on elsewhere, since 2030-01-01 12:00:00+00:00: its last heartbeat is' in capsys.readouterr().err
    assert not os.path.exists(os.path.join(model_dir, run_directory.LEASE_FILE))


def test_an_export_never_takes_the_version_of_another_in_progress(tmp_path):
    base = str(tmp_path)
    first, first_temporary = exporting.reserve_version(base)
    # Begun in the same second, while the first is being written: the next version.
    second, second_temporary = exporting.reserve_version(base)
    assert second == first + 1
    os.rename(first_temporary, os.path.join(base, str(first)))
    os.rename(second_temporary, os.path.join(base, str(second)))
    assert exporting.reserve_version(base)[0] > second
