"""The fused LSTM kernel's build: wherever it cannot be had (a compiler that fails, none
found, no writable cache) bin/train trains on Keras' LSTM and says why in one line, and a
failed build is not tried again by later runs."""

import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, user_environment
from estimator_models import cache
from estimator_models.layers import kernels

ANNOUNCEMENT = 'building the fused LSTM kernel for this machine'
KERAS_FALLBACK = "rnn_implementation=auto runs Keras' LSTM instead"


@pytest.fixture(scope='module')
def compressed_digits(digits_npz, tmp_path_factory):
    """The first 64 digits in a compressed .npz: reading it writes to the cache."""
    path = str(tmp_path_factory.mktemp('data') / 'compressed_digits.npz')
    with np.load(digits_npz) as digits:
        np.savez_compressed(path, **{name: array[:64] for name, array in digits.items()})
    return path


def train_briefly(data, model_dir, **environment):
    """bin/train for 2 tiny steps in a fresh process whose environment differs from a
    user's by `environment` (None: unset); returns the CompletedProcess."""
    env = user_environment()
    for name, value in environment.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return subprocess.run([sys.executable, os.path.join(REPO, 'bin', 'train'), '--model=pixel_row_lstm',
                           f'--data={data}', f'--model_dir={model_dir}', '--train_steps=2',
                           '--hparams=rnn_units=8,batch_size=8'],
                          capture_output=True, text=True, timeout=600, env=env)


def warnings_of(result):
    """The warning lines of a bin/train that trained its 2 steps on Keras' LSTM."""
    assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert 'LSTM: keras (rnn_implementation=auto)' in result.stdout
    assert 'step 2/2' in result.stdout
    return [line for line in result.stderr.splitlines() if line.startswith('warning:')]


def build_logs(folder):
    return glob.glob(os.path.join(folder, 'kernels', '*.log'))


def test_a_failing_compiler_leaves_training_on_keras_and_is_not_run_again(
        compressed_digits, tmp_path, monkeypatch, capfd):
    folder = tmp_path / 'cache'
    result = train_briefly(compressed_digits, tmp_path / 'run', CXX='/bin/false', **{cache.ENV: folder})
    [warning] = warnings_of(result)
    [log] = build_logs(folder)
    assert ANNOUNCEMENT in result.stderr
    assert f'with /bin/false failed (exit status 1); its output is in {log}' in warning
    assert warning.endswith(KERAS_FALLBACK)

    monkeypatch.setenv('CXX', '/bin/false')
    monkeypatch.setenv(cache.ENV, str(folder))
    built = os.stat(log).st_mtime_ns
    with pytest.raises(kernels.KernelUnavailable, match='an earlier run here: .* delete .*failed to try again'):
        kernels.load()
    assert ANNOUNCEMENT not in capfd.readouterr().err
    assert os.stat(log).st_mtime_ns == built


def test_another_compiler_is_tried_after_a_failed_build(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(cache.ENV, str(tmp_path / 'cache'))
    path = kernels.library_path()
    failing = tmp_path / 'failing-c++'
    failing.write_text('#!/bin/sh\necho "fatal error: no headers" >&2\nexit 3\n')
    failing.chmod(0o755)
    for compiler, reason in (('/bin/false', 'exit status 1'), (str(failing), 'fatal error: no headers')):
        monkeypatch.setenv('CXX', compiler)
        with pytest.raises(kernels.KernelUnavailable, match=re.escape(f'with {compiler} failed ({reason})')):
            kernels.build(path)
        assert ANNOUNCEMENT in capfd.readouterr().err


def test_without_a_compiler_nothing_is_announced_or_remembered(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(cache.ENV, str(tmp_path))
    monkeypatch.setenv('CXX', 'no-such-c++')
    assert not kernels.available()
    assert not kernels.available()
    err = capfd.readouterr().err
    assert err == ('warning: the C++ compiler CXX=no-such-c++ is not found, so there is no fused LSTM kernel; '
                   f'set CXX to an installed compiler; {KERAS_FALLBACK}\n')
    assert not os.path.exists(tmp_path / 'kernels')


def test_without_a_writable_cache_or_home_bin_train_runs_on_keras_with_one_line_per_problem(
        compressed_digits, tmp_path):
    """The cache below a file, then $HOME below a file: both use the same temporary
    folder, where the second run finds the first one's failed build."""
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    temporary = tmp_path / 'tmp'
    temporary.mkdir()
    failing = {'CXX': '/bin/false', 'TMPDIR': temporary}
    first = train_briefly(compressed_digits, tmp_path / 'first', **failing, **{cache.ENV: a_file / 'cache'})
    unwritable_home = {'HOME': a_file / 'home', cache.ENV: None, 'XDG_CACHE_HOME': None}
    [log] = build_logs(temporary / f'estimator_lstm-{os.getuid()}')
    built = os.stat(log).st_mtime_ns
    second = train_briefly(compressed_digits, tmp_path / 'second', **failing, **unwritable_home)
    fallback = f'using {temporary}/estimator_lstm-{os.getuid()}; set {cache.ENV} to a writable folder'
    for result, unwritable in ((first, a_file / 'cache'), (second, a_file / 'home/.cache/estimator_lstm')):
        cache_warning, kernel_warning = warnings_of(result)
        assert cache_warning == f'warning: cannot write the cache at {unwritable} (Not a directory); {fallback}'
        assert log in kernel_warning and kernel_warning.endswith(KERAS_FALLBACK)
    assert ANNOUNCEMENT in first.stderr and ANNOUNCEMENT not in second.stderr
    assert 'an earlier run here' in second.stderr
    assert os.stat(log).st_mtime_ns == built


def test_a_source_changed_under_a_running_process_keeps_the_library_it_loaded(tmp_path, monkeypatch):
    """A checkout updated while a long run builds its evaluation graphs: the process keeps
    the library whose ops it has registered instead of loading a second one."""
    library, path = kernels.load(), kernels.library_path()
    changed = tmp_path / 'lstm_sequence.cc'
    changed.write_text(open(kernels.SOURCE).read() + '\n// changed\n')
    monkeypatch.setattr(kernels, 'SOURCE', str(changed))
    assert kernels.library_path() == path
    assert kernels.load() is library
    assert hasattr(kernels.load(), 'lstm_sequence')
