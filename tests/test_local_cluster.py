"""Real TF_CONFIG clusters on 127.0.0.1, started by bin/launch_local_cluster as a user
would: separate bin/train processes for the chief, workers, ps and evaluator.

Longer trials (a killed chief, a killed ps) run with `make cluster-trials`."""

import contextlib
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, TINY, run_cli
from estimator_models.running import experiment, monitoring
from input_fns import embedded

TINY_PIXEL_ROWS = ','.join(f'{key}={value}' for key, value in TINY['pixel_row_lstm'].items())
TINY_CLIPS = ','.join(f'{key}={value}' for key, value in TINY['temporal_cnn_lstm'].items())


@pytest.fixture(scope='module')
def small_digits(tmp_path_factory):
    """The embedded glyph digits, `small` config, prepared once: (spec, data_dir)."""
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    embedded.open_embedded('glyph_digits', data_dir, 'small')
    return 'tfds:glyph_digits/small', data_dir


def launch(*args, timeout=600):
    """Runs bin/launch_local_cluster ARGS to its end; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(REPO, 'bin', 'launch_local_cluster'), *args],
                          capture_output=True, text=True, timeout=timeout)


def cluster_description(model_dir):
    with open(os.path.join(model_dir, 'cluster_logs', 'cluster.json')) as stream:
        return json.load(stream)


def log_of(model_dir, task):
    with open(os.path.join(model_dir, 'cluster_logs', f'{task}.log')) as stream:
        return stream.read()


def assert_cluster_gone(model_dir):
    """Every task process has exited and no task's port still listens."""
    description = cluster_description(model_dir)
    for task in description['tasks']:
        with pytest.raises(ProcessLookupError):
            os.kill(task['pid'], 0)
    for addresses in description['cluster'].values():
        for address in addresses:
            host, port = address.split(':')
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((host, int(port)), timeout=2).close()


def assert_exported_and_evaluated(model_dir, image_shape):
    """The evaluator wrote eval events and the latest SavedModel answers a request."""
    assert glob.glob(os.path.join(model_dir, 'eval', 'events.out.tfevents.*'))
    latest = os.path.join(model_dir, 'export', 'latest')
    version = max(os.listdir(latest), key=int)
    serving = tf.saved_model.load(os.path.join(latest, version)).signatures['serving_default']
    (key, spec), = serving.structured_input_signature[1].items()
    probabilities = serving(**{key: tf.zeros((1,) + image_shape, spec.dtype)})['probabilities'].numpy()
    np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-5)


def training_steps_in(log, task_name):
    return [int(step) for step in re.findall(rf'^{task_name}: step (\d+)/', log, re.MULTILINE)]


def test_all_reduce_workers_read_disjoint_tfrecord_shards_of_clips(tmp_path, clips_npz):
    shards = str(tmp_path / 'clips')
    run_cli('make_tfrecords', f'--input={clips_npz}', f'--output={shards}', '--shards=4')
    model_dir = str(tmp_path / 'run')
    result = launch('--workers=2', '--evaluator', '--', '--model=temporal_cnn_lstm',
                    '--distribution=multi_worker_mirrored', f'--model_dir={model_dir}',
                    f'--data={shards}.tfrecord*', '--train_steps=30', '--checkpoint_every=30',
                    f'--hparams={TINY_CLIPS}')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'synchronous all-reduce training' in result.stdout
    # precision=auto trains a cluster in float32 (bfloat16 convolutions fail there).
    assert 'training in float32 (precision=auto)' in result.stdout
    assert experiment.checkpoint_step(model_dir) == 30
    # The chief's session for the HParams tab, written before its all-reduce strategy starts.
    assert len(monitoring.hparams_event_files(model_dir)) == 1
    read = {}
    for task, name in (('chief-0', 'chief'), ('worker-0', 'worker 0')):
        log = log_of(model_dir, task)
        assert training_steps_in(log, name)
        files = re.search(rf'^{name}: reads part \d of 2 of .*: files (.*)$', log, re.MULTILINE).group(1)
        read[name] = set(files.split(', '))
    assert not read['chief'] & read['worker 0']
    assert read['chief'] | read['worker 0'] == set(glob.glob(f'{shards}.tfrecord-*'))
    assert_exported_and_evaluated(model_dir, (1, 32, 32, 1))
    assert_cluster_gone(model_dir)


# Global steps of the parameter-server run: the chief trains most of them after its pause
# below; enough that the worker, training alone during the pause, is still far from them
# when it is killed.
PS_TRAIN_STEPS = 1000


def task_pid(model_dir, task_type, index=0):
    """The pid of the (latest) process of task `index` of `task_type`."""
    return next(task['pid'] for task in cluster_description(model_dir)['tasks']
                if (task['type'], task['index']) == (task_type, index))


def steps_of_each_start(model_dir, task, task_name):
    """The training steps logged by each process the task has started so far, in order."""
    if not os.path.exists(os.path.join(model_dir, 'cluster_logs', f'{task}.log')):
        return []
    starts = re.split(rf'^{task_name}: training ', log_of(model_dir, task), flags=re.MULTILINE)[1:]
    return [training_steps_in(start, task_name) for start in starts]


def has_trained(model_dir, task, task_name, start=0):
    """Whether the task's process of that `start` (0: the first, 1: its restart) has logged a step."""
    starts = steps_of_each_start(model_dir, task, task_name)
    return len(starts) > start and bool(starts[start])


def wait_for(condition, what, launcher, timeout=300):
    """Polls `condition` until it holds; fails if the cluster ends first or `timeout` s pass."""
    deadline = time.time() + timeout
    while not condition():
        assert launcher.poll() is None, f'the cluster ended before {what}'
        assert time.time() < deadline, f'timed out waiting for {what}'
        time.sleep(0.1)


def test_parameter_server_cluster_restarts_a_killed_worker_trains_evaluates_exports_and_ends(
        tmp_path, small_digits):
    data, data_dir = small_digits
    model_dir = str(tmp_path / 'run')
    with open(tmp_path / 'out', 'w') as out, open(tmp_path / 'err', 'w') as err:
        launcher = subprocess.Popen(
            [sys.executable, os.path.join(REPO, 'bin', 'launch_local_cluster'), '--workers=3', '--ps=1',
             '--evaluator', '--max_restarts=1', '--worker_grace_secs=5', '--', '--model=pixel_row_lstm',
             f'--model_dir={model_dir}',
             f'--data={data}', f'--data_dir={data_dir}', f'--train_steps={PS_TRAIN_STEPS}',
             f'--checkpoint_every={PS_TRAIN_STEPS}', f'--hparams={TINY_PIXEL_ROWS}'], stdout=out, stderr=err)
    try:
        # The chief is paused (SIGSTOP) from its first step until the restarted worker has
        # trained: a parameter-server worker needs the chief only to have initialized the
        # variables, and on a loaded machine a running chief could reach --train_steps
        # before the worker, or its restart, took a step.
        # Worker 1 hangs from then on, as an all-reduce worker can in a collective step its
        # chief never takes.
        wait_for(lambda: has_trained(model_dir, 'chief-0', 'chief'), "the chief's first step", launcher)
        chief = task_pid(model_dir, 'chief')
        os.kill(chief, signal.SIGSTOP)
        os.kill(task_pid(model_dir, 'worker', 1), signal.SIGSTOP)
        try:
            wait_for(lambda: has_trained(model_dir, 'worker-0', 'worker 0'), "the worker's first step", launcher)
            os.kill(task_pid(model_dir, 'worker'), signal.SIGKILL)
            wait_for(lambda: has_trained(model_dir, 'worker-0', 'worker 0', start=1),
                     "the restarted worker's first step", launcher)
            # Then worker 0 hangs too: the chief trains to the end alone. Once it has
            # finished, worker 1 dies (and is not restarted), and worker 0 is stopped when
            # its grace is over.
            os.kill(task_pid(model_dir, 'worker'), signal.SIGSTOP)
        finally:
            with contextlib.suppress(ProcessLookupError):  # a cluster that failed has ended it
                os.kill(chief, signal.SIGCONT)
        wait_for(lambda: 'chief finished' in (tmp_path / 'out').read_text(), 'the chief to finish', launcher)
        os.kill(task_pid(model_dir, 'worker', 1), signal.SIGKILL)
        launcher.wait(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.terminate()  # the launcher stops every task on SIGTERM
            launcher.wait(timeout=60)
    output = (tmp_path / 'out').read_text()
    assert launcher.returncode == 0, output[-3000:] + (tmp_path / 'err').read_text()[-3000:]
    assert 'parameter-server training' in output
    assert 'worker 0 was killed by SIGKILL; restarting it (1 of 1)' in output
    assert 'worker 1 was killed by SIGKILL after the chief finished; not restarting it' in output
    assert 'worker 0 still running 5 s after the chief finished; stopping it' in output
    chief_starts = steps_of_each_start(model_dir, 'chief-0', 'chief')
    worker_starts = steps_of_each_start(model_dir, 'worker-0', 'worker 0')
    assert len(chief_starts) == 1 and chief_starts[0]
    assert len(worker_starts) == 2 and all(worker_starts), 'the worker, or its restart, did not train'
    final_step = experiment.checkpoint_step(model_dir)
    assert final_step >= PS_TRAIN_STEPS
    # The evaluator evaluated the last checkpoint before it ended.
    assert re.search(rf'^evaluator: eval at step {final_step} ', output, re.MULTILINE)
    assert_exported_and_evaluated(model_dir, (28, 28, 1))
    assert_cluster_gone(model_dir)
