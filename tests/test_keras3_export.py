"""Keras 3 exports: each model's model.keras, built in the second Python environment, loads
there and answers like its SavedModel; bin/export --format=keras3 prints its path and
exports a checkpoint once; and what cannot be exported (no checkpoint, a user's own
model_fn, an interpreter without Keras 3, an environment that cannot be made, a file that
disagrees) is refused in one line with nothing left behind."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, briefly_trained_export, held_out_arrays, run_cli, serve_in_a_fresh_process
from estimator_models import cache
from estimator_models.running import hparams as hparams_lib
from estimator_models.serving import exporting, keras3_environment, keras3_export, verification

# End to end against the real builder: each variant is trained 3 steps, exported, and its
# model.keras loaded in the Keras 3 environment and run on held-out examples.
KERAS3_EXPORTS = {
    'pixel_row_lstm': ('pixel_row_lstm', TINY['pixel_row_lstm']),
    'cnn_lstm': ('cnn_lstm', TINY['cnn_lstm']),
    'temporal_cnn_lstm': ('temporal_cnn_lstm', TINY['temporal_cnn_lstm']),
    'cnn_lstm_bidirectional_attention': (
        'cnn_lstm', dict(TINY['cnn_lstm'], bidirectional='true', pooling='attention')),
    'temporal_cnn_lstm_per_frame': ('temporal_cnn_lstm', dict(TINY['temporal_cnn_lstm'], head='per_frame')),
}
# The exports of these, trained as briefly, are conftest's.
SHARED_EXPORTS = {'pixel_row_lstm': 'digits_export', 'temporal_cnn_lstm': 'clips_export'}

# Run in the Keras 3 environment: loads a model.keras from disk and answers inputs.
# argv: model.keras, inputs .npz, outputs .npz.
LOAD_AND_PREDICT = '''
import sys
import keras
import numpy as np
model = keras.saving.load_model(sys.argv[1])
inputs = dict(np.load(sys.argv[2]))
outputs = model.predict(inputs, verbose=0)
np.savez(sys.argv[3], **{name: np.asarray(value) for name, value in outputs.items()})
'''

# A --keras3_python that runs the builder with the interpreter of its first line, then turns
# each answer's probabilities round by one class: a builder whose file disagrees.
DISAGREEING_PYTHON = '''#!{python}
import subprocess
import sys
import sys
import numpy as np
status = subprocess.call([sys.executable] + sys.argv[1:])
if status == 0 and '--verify_outputs' in sys.argv:
    path = sys.argv[sys.argv.index('--verify_outputs') + 1]
    outputs = dict(np.load(path))
    outputs['probabilities'] = np.roll(outputs['probabilities'], 1, axis=-1)
    np.savez(path, **outputs)
sys.exit(status)
'''


def _model_dir(run, folder, model=None):
    """A model_dir of `run`'s checkpoints (none when `run` has no model_dir) and its
    hparams.json, as bin/train leaves one; `model` names another model in the record."""
    if run.model_dir and os.path.isdir(run.model_dir):
        shutil.copytree(run.model_dir, folder, ignore=shutil.ignore_patterns('export'))
    record = run.record()
    if model is not None:
        record['model'] = model
    hparams_lib.save_run(str(folder), record)
    return folder


def _listing(folder):
    """Every path under `folder`, relative to it."""
    return sorted(os.path.relpath(os.path.join(directory, name), folder)
                  for directory, folders, files in os.walk(folder) for name in folders + files)


def _refused(model_dir, *flags):
    """bin/export --format=keras3's one error line for model_dir, which it must leave as it was."""
    before = _listing(model_dir)
    result = run_cli('export', f'--model_dir={model_dir}', '--format=keras3', *flags, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count('\n') == 1 and result.stderr.startswith('error: '), result.stderr
    assert _listing(model_dir) == before
    return result.stderr.strip().removeprefix('error: ')


def test_a_model_dir_without_a_checkpoint_is_one_line(digits_export, tmp_path):
    run, _, _ = digits_export
    model_dir = tmp_path / 'run'
    hparams_lib.save_run(str(model_dir), run.record())
    assert _refused(model_dir) == f'no checkpoint in {model_dir}'


def test_a_users_own_model_fn_is_refused_by_name(digits_export, tmp_path):
    run, _, _ = digits_export
    model_dir = _model_dir(run, tmp_path / 'run', model='examples.legacy_pixel_rnn:model_fn')
    line = _refused(model_dir)
    assert 'examples.legacy_pixel_rnn:model_fn' in line and 'has no Keras 3 form' in line


def test_an_interpreter_without_keras_3_is_one_line(digits_export, tmp_path):
    run, _, _ = digits_export
    model_dir = _model_dir(run, tmp_path / 'run')
    line = _refused(model_dir, '--keras3_python=/nonexistent/python')
    assert line.startswith('--keras3_python=/nonexistent/python cannot run the Keras 3 builder (')
    # This project's own interpreter has Keras 2: the builder cannot import Keras 3's ops.
    line = _refused(model_dir, f'--keras3_python={sys.executable}')
    assert 'cannot run the Keras 3 builder (' in line and 'it needs Keras 3' in line


def test_an_environment_that_cannot_be_made_is_one_line_and_leaves_nothing(digits_export, tmp_path,
                                                                            monkeypatch):
    """A fresh cache folder, and a pip that finds no packages: the venv is made, pip fails."""
    run, _, _ = digits_export
    model_dir = _model_dir(run, tmp_path / 'run')
    (tmp_path / 'no_wheels').mkdir()
    monkeypatch.setenv(cache.ENV, str(tmp_path / 'cache'))
    monkeypatch.setenv('PIP_CONFIG_FILE', os.devnull)
    monkeypatch.setenv('PIP_NO_INDEX', '1')
    monkeypatch.setenv('PIP_FIND_LINKS', str(tmp_path / 'no_wheels'))
    line = _refused(model_dir)
    assert line.startswith('cannot make the Keras 3 environment: pip install -r requirements-keras3.txt '
                           'failed (')
    assert line.endswith('; pass --keras3_python=PATH to use an existing one')
    made = tmp_path / 'cache' / keras3_environment.CACHE_DIR
    assert [name for name in os.listdir(made) if not name.endswith('.lock')] == []


def test_a_file_that_disagrees_with_the_saved_model_is_removed(digits_export, keras3_python, tmp_path):
    run, _, _ = digits_export
    model_dir = _model_dir(run, tmp_path / 'run')
    disagreeing = tmp_path / 'disagreeing_python'
    disagreeing.write_text(DISAGREEING_PYTHON.format(python=keras3_python))
    disagreeing.chmod(0o755)
    result = run_cli('export', f'--model_dir={model_dir}', '--format=keras3', f'--keras3_python={disagreeing}',
                     check=False)
    assert result.returncode == 2
    assert result.stderr.count('\n') == 1
    assert result.stderr.startswith('error: the Keras 3 model disagrees with the SavedModel on 64 images of '
                                    'seeded random pixels (seed 0): largest probability difference ')
    assert result.stderr.strip().endswith('different argmax; no Keras 3 file written')
    assert os.listdir(model_dir / 'export' / 'manual' / 'keras3') == []


def test_bin_export_prints_the_file_last_and_exports_a_checkpoint_once(digits_export, keras3_python, tmp_path):
    run, _, _ = digits_export
    model_dir = _model_dir(run, tmp_path / 'run')
    printed = run_cli('export', f'--model_dir={model_dir}', '--format=keras3').stdout.strip().splitlines()
    keras3_base = model_dir / 'export' / 'manual' / 'keras3'
    version, = exporting.versions(keras3_base)
    assert printed[-1] == str(keras3_base / str(version) / 'model.keras')
    assert printed[-2] == f'verified: {keras3_base / str(version) / "verification.json"}'
    assert sorted(os.listdir(keras3_base / str(version))) == ['checkpoint.json', 'model.keras', 'verification.json']
    assert run_cli('export', f'--model_dir={model_dir}', '--format=keras3').stdout.strip().splitlines() == printed
    assert exporting.versions(keras3_base) == [version]


@pytest.fixture(scope='module')
def trained(request, tmp_path_factory):
    """trained(name): (run, SavedModel path) of the model of KERAS3_EXPORTS[name] trained 3
    steps, once per module."""
    runs = {}

    def run_and_saved_model(name):
        if name not in runs:
            model, overrides = KERAS3_EXPORTS[name]
            if name in SHARED_EXPORTS:
                run, saved_model, _ = request.getfixturevalue(SHARED_EXPORTS[name])
            else:
                data = request.getfixturevalue(
                    'clips_with_frame_labels' if overrides.get('head') == 'per_frame'
                    else 'clips_npz' if model == 'temporal_cnn_lstm' else 'digits_npz')
                run, saved_model, _ = briefly_trained_export(model, data, tmp_path_factory, overrides)
            runs[name] = run, saved_model
        return runs[name]

    return run_and_saved_model


def _held_out_inputs(run, count=8):
    """Raw-pixel inputs of held-out examples (clips at their own lengths)."""
    examples = held_out_arrays(run, count)
    if run.module.KIND == 'clip':
        return {'frames': examples.inputs.astype(np.float32), 'lengths': examples.lengths.astype(np.int32)}
    return {'image': examples.inputs.astype(np.float32)}


@pytest.mark.parametrize('name', sorted(KERAS3_EXPORTS))
def test_each_model_exports_a_keras_3_file_that_answers_like_its_saved_model(name, trained, keras3_python,
                                                                            tmp_path):
    run, saved_model = trained(name)
    checkpoint = tf.train.latest_checkpoint(run.model_dir)
    path = keras3_export.export_keras3(run, checkpoint, str(tmp_path / 'keras3'), keras3_python)
    with open(os.path.join(os.path.dirname(path), 'verification.json')) as stream:
        recorded = json.load(stream)
    assert recorded['examples'] == verification.VERIFY_EXAMPLES and recorded['argmax_differences'] == 0
    assert recorded['largest_probability_difference'] <= verification.TOLERANCE
    assert recorded['backend'] == 'jax' and recorded['versions']['keras'].startswith('3.')
    assert recorded['checkpoint'] == checkpoint

    # Inputs the export was not verified on, answered by the file loaded in a process of its own.
    inputs = _held_out_inputs(run)
    np.savez(tmp_path / 'inputs.npz', **inputs)
    subprocess.run([keras3_python, '-c', LOAD_AND_PREDICT, path, str(tmp_path / 'inputs.npz'),
                    str(tmp_path / 'outputs.npz')], check=True, capture_output=True,
                   env=dict(os.environ, KERAS_BACKEND='jax'))
    answered = dict(np.load(tmp_path / 'outputs.npz'))
    served = serve_in_a_fresh_process(saved_model, inputs, tmp_path,
                                      verification.saved_model_signature(run.module.KIND))
    assert set(answered) == set(served)
    # Within the tolerance, the same argmax (per-frame heads: on each clip's true frames).
    verification.agreement(served, answered, inputs, 'held-out examples', 'Keras 3 model')
