"""A run that diverges stops with one line naming the step and the last good checkpoint;
a write that fails (a full disk, met by a bin/train process) is one line too, and loses
nothing written before."""

import contextlib
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_bin, run_cli

SMALL = ['--model=pixel_row_lstm', '--hparams=rnn_units=16,batch_size=16,warmup_steps=1']


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(digits_npz, tmp_path):
    model_dir = str(tmp_path / 'run')
    # Adam moves each weight by about the learning rate: 3e38 overflows float32 at once.
    result = run_cli('train', f'--data={digits_npz}', f'--model_dir={model_dir}', *SMALL,
                     '--learning_rate=3e38', '--train_steps=50', '--checkpoint_every=10', check=False)
    assert result.returncode == 3
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith('error: loss is nan at step ') or line.startswith('error: loss is inf at step ')
    checkpoint = tf.train.latest_checkpoint(model_dir)
    assert f'The last good checkpoint, {checkpoint}, is kept' in line
    for name, _ in tf.train.list_variables(checkpoint):
        assert np.all(np.isfinite(tf.train.load_variable(checkpoint, name))), name
    evaluated = run_cli('evaluate', f'--model_dir={model_dir}')
    assert '"accuracy"' in evaluated.stdout
    exported = run_cli('export', f'--model_dir={model_dir}').stdout.strip().splitlines()[-1]
    assert os.path.exists(os.path.join(exported, 'saved_model.pb'))


@contextlib.contextmanager
def small_file_system(path, megabytes):
    """A tmpfs of `megabytes` mounted at `path`, where this machine lets the test mount one."""
    os.makedirs(path)
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={megabytes}m', 'tmpfs', str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f'cannot mount a size-limited file system here: {mounted.stderr.decode().strip()}')
    try:
        yield path
    finally:
        # Runs in this process leave their events files open in TensorFlow's writer cache.
        tf.compat.v1.summary.FileWriterCache.clear()
        subprocess.run(['umount', str(path)], check=False)


def _fill(directory, leave_bytes):
    """Fills the file system of `directory` up to `leave_bytes` free; returns the filler."""
    filler = os.path.join(directory, 'filler')
    free = shutil.disk_usage(directory).free
    with open(filler, 'wb') as stream:
        stream.write(b'\0' * max(0, free - leave_bytes))
    return filler


def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_room(digits_npz, tmp_path):
    with small_file_system(tmp_path / 'disk', 64) as disk:
        model_dir = str(disk / 'run')
        args = [f'--data={digits_npz}', f'--model_dir={model_dir}', *SMALL, '--checkpoint_every=10']
        run_cli('train', *args, '--train_steps=10')
        good = tf.train.latest_checkpoint(model_dir)
        filler = _fill(str(disk), leave_bytes=64 * 1024)
        # A process of its own: all it writes to stderr, until it has exited, is one line.
        failed = run_bin('train', *args, '--train_steps=20', check=False)
        assert failed.returncode != 0
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: '), failed.stderr
        # What was written before still loads.
        assert tf.train.latest_checkpoint(model_dir) == good
        tf.train.load_variable(good, 'rnn_0/lstm_cell/kernel')
        os.remove(filler)
        resumed = run_cli('train', *args, '--train_steps=20')
        assert 'at step 20' in resumed.stdout
