"""The command line itself: each command's --help, the names suggested for a misspelt one,
and TensorFlow's logs, shown with --verbosity and kept off the terminal without it."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, TINY, run_bin, run_cli, train_without_evaluating
from estimator_models import pixel_row_lstm
from estimator_models.errors import UserError
from estimator_models.running import hparams, tensorflow_logs
from estimator_models.running.cli import COMMANDS, usage

# Lines of --helpfull that --help must not hold: absl's, absltest's, TPU and TFDS flags.
FOREIGN_FLAGS = ('--[no]alsologtostderr', '--[no]logtostderr', '--log_dir', '--[no]pdb',
                 '--[no]only_check_args', '--tpu', '--test_srcdir', '--test_tmpdir', '--tfds_')
# A flag's line in --help: `  --name`, `  --[no]name` or `  -v, --name`.
FLAG_LINE = re.compile(r'^  (?:-\w, )?--(?:\[no\])?(\w+)', re.MULTILINE)
# TensorFlow's Python lines through absl's handler (`I1206 04:03:44.425 123 saver.py:1413] ...`)
# and its C++ lines (`2026-12-06 04:03:44.425: I tensorflow/...`).
PYTHON_INFO_LINE = re.compile(r'^I\d{4} [\d:.]+ +\d+ \w+\.py:\d+\] ', re.MULTILINE)
CPP_LINE = re.compile(r'^\d{4}-\d\d-\d\d [\d:.]+: [IWE] ', re.MULTILINE)


def _sections(help_text):
    """{heading: its lines as one string} of the flag groups of a --help."""
    sections = {}
    for block in help_text.split('\n\n'):
        heading, _, body = block.partition('\n')
        if heading.endswith(':') and body.startswith('  -'):
            sections[heading[:-1]] = body
    return sections


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_help_lists_each_flag_of_the_command_under_its_group(name):
    result = run_cli(name, '--help')
    command = COMMANDS[name]
    sections = _sections(result.stdout)
    assert list(sections) == [group.heading for group in command.groups]
    for group in command.groups:
        section = sections[group.heading]
        assert FLAG_LINE.findall(section) == [flag.name for flag in group.defined_flags()]
        for flag in group.defined_flags():
            assert ' '.join(flag.help.split()[:4]) in ' '.join(section.split()), flag.name
    assert not any(foreign in result.stdout for foreign in FOREIGN_FLAGS)


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_help_opens_with_what_the_command_does_and_two_examples(name):
    lines = run_cli(name, '--help').stdout.splitlines()
    assert lines[0] == f'bin/{name}: {COMMANDS[name].summary}'
    assert lines[2].startswith(f'usage: bin/{name} ') and lines[3].startswith(f'       bin/{name} ')
    assert lines[4] == ''
    assert lines[-1].startswith(f'bin/{name} --helpfull ')


@pytest.mark.parametrize('spelling', ['-h', '-?', '--helpshort'])
def test_every_spelling_of_help_gives_the_same_help(spelling):
    assert run_cli('train', spelling).stdout == run_cli('train', '--help').stdout


def test_help_after_a_double_dash_belongs_to_the_command_behind_it():
    assert usage.requested(['--workers=2', '--help'])
    assert not usage.requested(['--workers=2', '--', '--model=cnn_lstm', '--help'])


def test_the_process_prints_the_same_help_and_helpfull_stays_absls():
    in_process = run_cli('train', '--help')
    own = run_bin('train', '--help')
    assert own.returncode == 0 and own.stdout == in_process.stdout and own.stderr == ''
    full = run_bin('train', '--helpfull', check=False).stdout
    assert '--[no]alsologtostderr' in full and '--model_dir' in full


@pytest.mark.parametrize('args, line', [
    (['--model=cnn_lsmt'], "error: unknown model 'cnn_lsmt'; did you mean cnn_lstm? (choose one of "
                           'pixel_row_lstm, cnn_lstm, temporal_cnn_lstm or give your own model_fn'),
    (['--model=resnet'], "error: unknown model 'resnet'; choose one of pixel_row_lstm, cnn_lstm, "),
    (['--model=pixel_row_lstm', '--hparams=rnn_unitz=8'],
     "error: unknown hparam 'rnn_unitz'; did you mean rnn_units? (known: attention_units, augment, "),
])
def test_a_misspelt_name_is_told_the_names_closest_to_it(args, line, tmp_path):
    result = run_cli('train', *args, check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(line)


def test_hparams_suggest_several_close_keys():
    with pytest.raises(UserError, match=r"'rnn_unit'; did you mean rnn_units or attention_units\? \(known: "):
        hparams.resolve(pixel_row_lstm, {'rnn_unit': '8'})


@pytest.mark.parametrize('argv, verbosity', [
    ([], None),
    (['--model=cnn_lstm', '-v', '0'], 0),
    (['--verbosity=-1'], -1),
    (['-v=1', '--model=cnn_lstm'], 1),
    (['-v=info'], None),  # not a number: the command's own parse reports it
    (['--workers=2', '--', '-v', '0'], None),  # bin/train's, behind bin/launch_local_cluster
])
def test_verbosity_is_read_from_the_command_line_as_absl_reads_it(argv, verbosity):
    assert tensorflow_logs.verbosity_in(argv) == verbosity


@pytest.mark.parametrize('verbosity, cpp_level', [(None, '3'), (-3, '3'), (-2, '2'), (-1, '1'), (0, '0'), (1, '0')])
def test_verbosity_sets_tensorflows_cpp_log_level(verbosity, cpp_level, monkeypatch):
    monkeypatch.setenv(tensorflow_logs.CPP_LEVEL_ENV, '0')
    tensorflow_logs.set_cpp_level(verbosity)
    assert os.environ[tensorflow_logs.CPP_LEVEL_ENV] == cpp_level


def _bin_with_cpp_level(cpp_level, command, *args):
    """bin/<command> in a fresh process whose environment exports TF_CPP_MIN_LOG_LEVEL=cpp_level."""
    return subprocess.run([sys.executable, os.path.join(REPO, 'bin', command), *args], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL=cpp_level))


@pytest.mark.parametrize('exported', ['0', '2'])
def test_without_verbosity_a_mistake_is_one_line_whatever_level_the_user_exported(exported, tmp_path):
    result = _bin_with_cpp_level(exported, 'train', '--model=cnn_lsmt', f'--model_dir={tmp_path}/run')
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: unknown model 'cnn_lsmt'; did you mean cnn_lstm? (choose one of pixel_row_lstm, cnn_lstm, "
        'temporal_cnn_lstm or give your own model_fn as package.module:function)']


@pytest.fixture(scope='module')
def trained_one_step(tmp_path_factory, digits_npz):
    """A model_dir of pixel_row_lstm trained one step on 16 examples, with its run record."""
    run = train_without_evaluating('pixel_row_lstm', digits_npz, str(tmp_path_factory.mktemp('run')),
                                   TINY['pixel_row_lstm'], steps=1, num_examples=16)
    hparams.save_run(run.model_dir, run.record())
    return run.model_dir


def test_verbosity_brings_back_tensorflows_python_and_cpp_lines(trained_one_step):
    result = _bin_with_cpp_level('3', 'evaluate', f'--model_dir={trained_one_step}', '--steps=1', '-v', '0')
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"global_step": 1' in result.stdout
    assert re.search(r'\] Restoring parameters from .*model\.ckpt-1$', result.stderr, re.MULTILINE)
    assert PYTHON_INFO_LINE.search(result.stderr) and CPP_LINE.search(result.stderr)
    # Through absl's handler only, not TensorFlow's own as well.
    assert 'INFO:tensorflow:' not in result.stderr
