"""Validation first: every mistake that flags, hparams and file headers reveal stops
bin/train with one `error:` line and exit code 2 before any dataset is prepared or
loaded and before any graph is built."""

import os
import re
import resource
import time

import pytest

from conftest import run_bin, run_cli
from estimator_models import pixel_row_lstm
from estimator_models.errors import UserError
from estimator_models.running import experiment, hparams

# The CPU time (user + system) a refused run may take: TensorFlow's import and the
# checks, far from the minutes of preparing the 70,000 embedded digits.
CPU_SECONDS = 10.0


@pytest.fixture
def empty_data_dirs(tmp_path, monkeypatch):
    """Empty TFDS and .npz cache directories for the run: they must stay empty."""
    directories = [tmp_path / 'tensorflow_datasets', tmp_path / 'cache']
    for directory in directories:
        directory.mkdir()
    monkeypatch.setenv('TFDS_DATA_DIR', str(directories[0]))
    monkeypatch.setenv('ESTIMATOR_LSTM_CACHE', str(directories[1]))
    return directories


@pytest.fixture
def saved_run(tmp_path):
    """A model_dir holding a pixel_row_lstm run record with rnn_units=16."""
    model_dir = tmp_path / 'saved'
    resolved = hparams.resolve(pixel_row_lstm, {'rnn_units': '16'}, (28, 28, 1, 10))
    hparams.save_run(str(model_dir), {'model': 'pixel_row_lstm', 'data': None, 'eval_data': None,
                                      'class_names': None, 'hparams': resolved})
    return model_dir


A_FILE = '{tmp}/a_file'
# Each through bin/train: one of each kind of mistake.
COMMAND_CASES = [
    (['--model=resnet'], "unknown model 'resnet'"),
    (['--model=pixel_row_lstm', '--hparams=rnn_units=-3'], 'hparam rnn_units must be positive, got -3'),
    (['--model=pixel_row_lstm', '--save_every_secs=-5'], '--save_every_secs must be 0 (off) or more'),
    (['--model=pixel_row_lstm', '--data=/no/such/file.npz'], 'no such .npz file: /no/such/file.npz'),
    (['--model=pixel_row_lstm', f'--model_dir={A_FILE}'], 'is a file, not a directory'),
    (['--model=pixel_row_lstm', '--batch_size=20000'],
     'batch_size 20000 is larger than the 10000 evaluation examples of glyph_digits'),
    (['--model=pixel_row_lstm', '--model_dir={tmp}/saved', '--hparams=rnn_units=64'],
     'hparam rnn_units=64 differs from rnn_units=16 saved in model_dir'),
    (['--model=pixel_row_lstm', '--warm_start_from=/no/such/checkpoint'],
     '--warm_start_from=/no/such/checkpoint: no such checkpoint or model_dir'),
]
# The mistake refused in a fresh process too, TensorFlow's import included in its CPU time:
# the embedded digits it names would take minutes to prepare.
PROCESS_CASE = COMMAND_CASES[5]
# The same checks (experiment.validate_training, which bin/train runs first) in-process:
# (model, model_dir, data, eval_data, hparams, export_dir) and the error.
VALIDATION_CASES = [
    (('pixel_row_lstm', 'run', None, None, 'no_such_key=1', None), "unknown hparam 'no_such_key'"),
    (('pixel_row_lstm', 'run', None, None, 'dropout=1.5', None), 'hparam dropout must lie in [0, 1)'),
    (('pixel_row_lstm', 'run', None, None, 'learning_rate=0', None), 'hparam learning_rate must be positive'),
    (('pixel_row_lstm', 'run', None, None, 'height=-28', None), 'hparam height must be positive'),
    (('cnn_lstm', 'run', None, None, 'cnn_filters=[32,0]', None), 'hparam cnn_filters must list positive'),
    (('pixel_row_lstm', 'run', None, None, 'cell=transformer', None), 'hparam cell='),
    (('pixel_row_lstm', 'run', '/no/such/dir/*.tfrecord', None, '', None), 'no TFRecord files match'),
    (('pixel_row_lstm', 'run', 'no_such_thing', None, '', None), "unknown data spec 'no_such_thing'"),
    (('pixel_row_lstm', 'run', None, '/no/such/eval.npz', '', None), 'no such .npz file'),
    (('temporal_cnn_lstm', 'run', 'glyph_digits', None, '', None), 'holds images but this model reads clips'),
    (('pixel_row_lstm', 'run', None, None, '', 'a_file/export'), 'is a file, not a directory'),
    (('cnn_lstm', 'saved', None, None, '', None), 'holds a run of pixel_row_lstm, not cnn_lstm'),
    (('no_such_package.module:model_fn', 'run', None, None, '', None), 'cannot import no_such_package.module'),
]


def _assert_nothing_written(data_dirs, tmp_path):
    for directory in data_dirs:
        assert os.listdir(directory) == [], f'{directory} was written to'
    assert not (tmp_path / 'run').exists()


def _refused(runner, args, message, data_dirs, tmp_path):
    """Runs bin/train ARGS (formatted with tmp=tmp_path, a model_dir added if none is given)
    through `runner`, run_cli in this process or run_bin in a fresh one, in tmp_path; checks
    it refused the mistake with `message` in one line, having written nothing and taken
    under CPU_SECONDS of CPU."""
    (tmp_path / 'a_file').write_text('not a directory')
    args = [arg.format(tmp=tmp_path) for arg in args]
    if not any(arg.startswith('--model_dir') for arg in args):
        args.append(f'--model_dir={tmp_path / "run"}')
    whose = resource.RUSAGE_CHILDREN if runner is run_bin else resource.RUSAGE_SELF
    before, start = resource.getrusage(whose), time.time()
    result = runner('train', *args, check=False, cwd=str(tmp_path))
    after, wall = resource.getrusage(whose), time.time() - start
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    assert message in lines[0]
    _assert_nothing_written(data_dirs, tmp_path)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < CPU_SECONDS, f'the refused run took {cpu:.1f} s of CPU ({wall:.1f} s wall)'


@pytest.mark.parametrize('args, message', COMMAND_CASES)
def test_bin_train_refuses_a_mistake_before_any_data_or_graph(args, message, empty_data_dirs, saved_run, tmp_path):
    _refused(run_cli, args, message, empty_data_dirs, tmp_path)


def test_a_bin_train_process_refuses_a_mistake_in_seconds(empty_data_dirs, saved_run, tmp_path):
    _refused(run_bin, *PROCESS_CASE, empty_data_dirs, tmp_path)


@pytest.mark.parametrize('arguments, message', VALIDATION_CASES)
def test_validation_refuses_a_mistake_before_any_data(arguments, message, empty_data_dirs, saved_run, tmp_path):
    (tmp_path / 'a_file').write_text('not a directory')
    model, model_dir, data, eval_data, overrides, export_dir = arguments
    with pytest.raises(UserError, match=re.escape(message)):
        experiment.validate_training(
            model, str(tmp_path / model_dir), data, eval_data, hparams.parse_overrides(overrides),
            export_dir=export_dir and str(tmp_path / export_dir))
    _assert_nothing_written(empty_data_dirs, tmp_path)
