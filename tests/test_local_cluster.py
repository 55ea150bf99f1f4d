"""Real TF_CONFIG clusters on 127.0.0.1, started by bin/launch_local_cluster as a user
would: separate bin/train processes for the chief, workers, ps and evaluator.

Longer trials (a killed chief, a killed ps) run with `make cluster-trials`."""

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

from conftest import REPO, TINY, run_bin
from estimator_models.running import experiment
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


def test_parameter_server_cluster_trains_evaluates_exports_and_ends(tmp_path, small_digits):
    data, data_dir = small_digits
    model_dir = str(tmp_path / 'run')
    result = launch('--workers=2', '--ps=1', '--evaluator', '--', '--model=pixel_row_lstm',
                    f'--model_dir={model_dir}', f'--data={data}', f'--data_dir={data_dir}',
                    # Enough steps that a worker still building its graph on a loaded
                    # machine joins before the chief is done.
                    '--train_steps=1500', '--checkpoint_every=500', f'--hparams={TINY_PIXEL_ROWS}')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert experiment.checkpoint_step(model_dir) >= 1500
    assert training_steps_in(log_of(model_dir, 'chief-0'), 'chief')
    assert training_steps_in(log_of(model_dir, 'worker-0'), 'worker 0')
    assert 'parameter-server training' in result.stdout
    assert re.search(r'^evaluator: eval at step 1[5-9]\d\d ', result.stdout, re.MULTILINE)
    assert_exported_and_evaluated(model_dir, (28, 28, 1))
    assert_cluster_gone(model_dir)


def test_all_reduce_workers_read_disjoint_tfrecord_shards_of_clips(tmp_path, clips_npz):
    shards = str(tmp_path / 'clips')
    run_bin('make_tfrecords', f'--input={clips_npz}', f'--output={shards}', '--shards=4')
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


def test_a_killed_worker_is_restarted_and_the_run_still_finishes(tmp_path, small_digits):
    data, data_dir = small_digits
    model_dir = str(tmp_path / 'run')
    launcher = subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'bin', 'launch_local_cluster'), '--workers=2', '--ps=1',
         '--evaluator', '--max_restarts=1', '--', '--model=pixel_row_lstm', f'--model_dir={model_dir}',
         # The default model, not the tiny one: the run must outlast the worker's restart.
         f'--data={data}', f'--data_dir={data_dir}', '--train_steps=1000', '--checkpoint_every=500'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        worker_log = os.path.join(model_dir, 'cluster_logs', 'worker-0.log')
        deadline = time.time() + 300
        while not (os.path.exists(worker_log) and training_steps_in(log_of(model_dir, 'worker-0'), 'worker 0')):
            assert time.time() < deadline and launcher.poll() is None, 'the worker never trained'
            time.sleep(0.5)
        worker = next(task for task in cluster_description(model_dir)['tasks'] if task['type'] == 'worker')
        os.kill(worker['pid'], signal.SIGKILL)
        output, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, output[-3000:]
    assert 'worker 0 was killed by SIGKILL; restarting it (1 of 1)' in output
    log = log_of(model_dir, 'worker-0')
    after_restart = log[log.rindex('worker 0: training pixel_row_lstm'):]
    assert training_steps_in(after_restart, 'worker 0'), 'the restarted worker did not train'
    assert experiment.checkpoint_step(model_dir) >= 1000
    assert_exported_and_evaluated(model_dir, (28, 28, 1))
    assert_cluster_gone(model_dir)
