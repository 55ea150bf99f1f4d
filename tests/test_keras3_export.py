"""Keras 3 exports: each model's model.keras, built in the second Python environment, loads
there and answers like its SavedModel; bin/export --format=keras3 prints its path and
exports a checkpoint once; and what cannot be exported (no checkpoint, a user's own
model_fn, an interpreter without Keras 3, an environment that cannot be made, a file that
disagrees) is refused in one line with nothing left behind."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import (REPO, TINY, TINY_WITHOUT_BATCH_NORM, briefly_trained_export, run_cli,
                      serve_each_in_one_fresh_process)
from estimator_models import cache
from estimator_models.running import hparams as hparams_lib
from estimator_models.serving import exporting, keras3_environment, keras3_export, verification

# End to end against the real builder: each variant trained 3 steps, exported (verified on
# seeded random pixels, clips of every length 1..8), and its model.keras loaded in a Keras 3
# process of its own to answer held-out examples. make test exports the three models, a
# bidirectional GRU over a BatchNorm CNN pooled by attention among them; `make
# keras3-exports` adds every other option (EVERY_OPTION). {name: (model, hparams, data)}.
KERAS3_EXPORTS = {
    'pixel_row_lstm': ('pixel_row_lstm', TINY['pixel_row_lstm'], 'digits_npz'),
    'temporal_cnn_lstm': ('temporal_cnn_lstm', TINY['temporal_cnn_lstm'], 'clips_npz'),
    'cnn_lstm_batch_norm_bidirectional_gru_attention': (
        'cnn_lstm', dict(TINY['cnn_lstm'], cell='gru', bidirectional='true', pooling='attention'), 'digits_npz'),
}
EVERY_OPTION = {
    'pixel_row_lstm_columns_gru_reset_before_mean': (
        'pixel_row_lstm', dict(TINY['pixel_row_lstm'], scan='columns', cell='gru', gru_reset_after='false',
                               pooling='mean'), 'digits_npz'),
    'cnn_lstm_flatten_step_max': (
        'cnn_lstm', dict(TINY['cnn_lstm'], sequence='flatten', step='3', pooling='max'), 'digits_npz'),
    'cnn_lstm_pooled_2_layers_dropout_frozen': (
        'cnn_lstm', dict(TINY['cnn_lstm'], sequence='pooled', rnn_layers='2', dropout='0.2', input_dropout='0.1',
                         backbone_trainable='false'), 'digits_npz'),
    'cnn_lstm_columns_without_batch_norm': (
        'cnn_lstm', dict(TINY['cnn_lstm'], sequence='columns', cnn_batch_norm='false'), 'digits_npz'),
    'cnn_lstm_regions_grid': ('cnn_lstm', dict(TINY['cnn_lstm'], sequence='regions', regions='grid'), 'digits_npz'),
    'cnn_lstm_regions_boxes_step_attention': (
        'cnn_lstm', dict(TINY_WITHOUT_BATCH_NORM['cnn_lstm'], sequence='regions', regions='boxes', step='2',
                         pooling='attention'), 'digits_with_boxes'),
    'cnn_lstm_resnet50_gru': (
        'cnn_lstm', dict(TINY['cnn_lstm'], backbone='resnet50', height='32', width='32', batch_size='4', cell='gru'),
        'digits_npz'),
    'temporal_cnn_lstm_per_frame': (
        'temporal_cnn_lstm', dict(TINY['temporal_cnn_lstm'], head='per_frame'), 'clips_with_frame_labels'),
    'temporal_cnn_lstm_bidirectional_max_no_differences': (
        'temporal_cnn_lstm', dict(TINY['temporal_cnn_lstm'], bidirectional='true', pooling='max',
                                  frame_differences='false'), 'clips_npz'),
    'temporal_cnn_lstm_mobilenet_v2_attention_max_frames': (
        'temporal_cnn_lstm', dict(TINY['temporal_cnn_lstm'], backbone='mobilenet_v2', batch_size='4',
                                  pooling='attention', max_frames='5'), 'clips_npz'),
}
VARIANTS = {**KERAS3_EXPORTS, **(EVERY_OPTION if os.environ.get('KERAS3_EVERY_OPTION') == '1' else {})}
# The exports of these, trained as briefly, are conftest's.
SHARED_EXPORTS = {'pixel_row_lstm': 'digits_export', 'temporal_cnn_lstm': 'clips_export'}
HELD_OUT_EXAMPLES = 16

# Run in the Keras 3 environment: loads each model.keras from disk and answers its inputs.
# argv: a JSON list of [model.keras, inputs .npz, outputs .npz].
LOAD_AND_PREDICT = '''
import json
import sys
import keras
import numpy as np
for path, inputs_path, outputs_path in json.loads(sys.argv[1]):
    model = keras.saving.load_model(path)
    outputs = model.predict(dict(np.load(inputs_path)), verbose=0)
    np.savez(outputs_path, **{name: np.asarray(value) for name, value in outputs.items()})
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


def _trained(request, tmp_path_factory, name):
    """(run, SavedModel path) of VARIANTS[name] trained 3 steps on its data."""
    model, overrides, data = VARIANTS[name]
    if name in SHARED_EXPORTS:
        run, saved_model, _ = request.getfixturevalue(SHARED_EXPORTS[name])
        return run, saved_model
    run, saved_model, _ = briefly_trained_export(model, request.getfixturevalue(data), tmp_path_factory, overrides)
    return run, saved_model


def _answered_in_keras_3(keras3_python, requests, folder):
    """{name: outputs} of each {name: (model.keras, inputs)}, one Keras 3 process for all."""
    calls = []
    for index, (path, inputs) in enumerate(requests.values()):
        np.savez(folder / f'inputs_{index}.npz', **inputs)
        calls.append([path, str(folder / f'inputs_{index}.npz'), str(folder / f'outputs_{index}.npz')])
    subprocess.run([keras3_python, '-c', LOAD_AND_PREDICT, json.dumps(calls)], check=True, capture_output=True,
                   env=dict(os.environ, KERAS_BACKEND='jax'))
    return {name: dict(np.load(folder / f'outputs_{index}.npz')) for index, name in enumerate(requests)}


@pytest.fixture(scope='module')
def exported(request, tmp_path_factory, keras3_python):
    """{name: (run, checkpoint, model.keras, held-out inputs, the SavedModel's answers, the
    Keras 3 file's)} of every variant: held-out examples of its eval data (clips at their
    own lengths, boxes as the data has them), answered by one fresh process of each kind."""
    folder = tmp_path_factory.mktemp('keras3_exports')
    exports = {}
    for name in VARIANTS:
        run, saved_model = _trained(request, tmp_path_factory, name)
        checkpoint = tf.train.latest_checkpoint(run.model_dir)
        path = keras3_export.export_keras3(run, checkpoint, str(folder / name), keras3_python)
        inputs, _ = verification.verification_inputs(run, run.sources()[1], count=HELD_OUT_EXAMPLES)
        exports[name] = run, checkpoint, path, saved_model, inputs
    answered = _answered_in_keras_3(keras3_python, {name: (path, inputs) for name, (_, _, path, _, inputs)
                                                    in exports.items()}, folder)
    served = serve_each_in_one_fresh_process(
        {name: (saved_model, verification.saved_model_signature(run.module.KIND), inputs)
         for name, (run, _, _, saved_model, inputs) in exports.items()}, folder)
    return {name: (run, checkpoint, path, inputs, served[name], answered[name])
            for name, (run, checkpoint, path, _, inputs) in exports.items()}


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_each_model_exports_a_keras_3_file_that_answers_like_its_saved_model(name, exported):
    run, checkpoint, path, inputs, served, answered = exported[name]
    with open(os.path.join(os.path.dirname(path), 'verification.json')) as stream:
        recorded = json.load(stream)
    assert recorded['examples'] == verification.VERIFY_EXAMPLES and recorded['argmax_differences'] == 0
    assert recorded['largest_probability_difference'] <= verification.TOLERANCE
    assert recorded['backend'] == 'jax' and recorded['versions']['keras'].startswith('3.')
    assert recorded['checkpoint'] == checkpoint
    if run.module.KIND == 'clip':
        assert 'lengths 1..' in recorded['inputs']

    # Held-out examples the export was not verified on, answered by the file loaded anew.
    assert set(answered) == set(served)
    assert {key: value.shape for key, value in answered.items()} == {key: value.shape for key, value in served.items()}
    # Within the tolerance, the same argmax (per-frame heads: on each clip's true frames).
    figures = verification.agreement(served, answered, inputs, 'held-out examples', 'Keras 3 model')
    assert figures['examples'] == HELD_OUT_EXAMPLES
    if 'attention' in served:
        np.testing.assert_allclose(answered['attention'], served['attention'], atol=verification.TOLERANCE)


def test_the_fine_tuning_example_trains_the_exported_file_on(exported, keras3_python, digits_npz, tmp_path):
    """examples/keras3_fine_tune.py in the Keras 3 environment: the loss on the data falls,
    and the file it saves loads and answers."""
    _, _, path, inputs, _, answered = exported['pixel_row_lstm']
    result = subprocess.run(
        [keras3_python, os.path.join(REPO, 'examples', 'keras3_fine_tune.py'), f'--model={path}',
         f'--data={digits_npz}', '--steps=40', '--learning_rate=0.003', f'--output={tmp_path / "tuned.keras"}'],
        check=True, capture_output=True, text=True, env=dict(os.environ, KERAS_BACKEND='jax'))
    lines = result.stdout.strip().splitlines()
    loss_line, = [line for line in lines if line.startswith('loss on ')]
    before, after = (float(word) for word in re.findall(r'(\d+\.\d+) (?:before|after)', loss_line))
    assert after < before - 0.05, loss_line
    assert lines[-1] == str(tmp_path / 'tuned.keras')
    tuned = _answered_in_keras_3(keras3_python, {'tuned': (lines[-1], inputs)}, tmp_path)['tuned']
    assert tuned['probabilities'].shape == answered['probabilities'].shape
    assert not np.allclose(tuned['probabilities'], answered['probabilities'], atol=1e-3)
