"""ONNX exports: each model's file answers like its SavedModel (clips of every length 1..T),
its recurrent layers become ONNX's own LSTM and GRU ops, bin/train writes one beside each
SavedModel, bin/predict --onnx answers like --saved_model, and a graph that cannot convert
or a file that disagrees is refused in one line with nothing left behind."""

import collections
import json
import os
import pathlib
import shutil
import textwrap

import numpy as np
import onnx
import pytest
import tensorflow as tf

from conftest import TINY, briefly_trained_export, held_out_arrays, run_cli, serve_each_in_one_fresh_process
from estimator_models.errors import UserError
from estimator_models.running import experiment
from estimator_models.serving import exporting, onnx_export, onnx_serving, predicting, verification

ONNX_EXPORTS = {
    'pixel_row_lstm': ('pixel_row_lstm', TINY['pixel_row_lstm']),
    'pixel_row_gru_mean': ('pixel_row_lstm', dict(TINY['pixel_row_lstm'], cell='gru', pooling='mean')),
    'cnn_lstm_bidirectional_2_layers_attention': (
        'cnn_lstm', dict(TINY['cnn_lstm'], bidirectional='true', rnn_layers='2', pooling='attention')),
    'cnn_lstm_regions_grid': ('cnn_lstm', dict(TINY['cnn_lstm'], sequence='regions', regions='grid')),
    'temporal_cnn_lstm': ('temporal_cnn_lstm', TINY['temporal_cnn_lstm']),
    'temporal_cnn_lstm_bidirectional_max': (
        'temporal_cnn_lstm', dict(TINY['temporal_cnn_lstm'], bidirectional='true', pooling='max')),
}
# The exports of these, trained as briefly, are conftest's.
SHARED_EXPORTS = {'pixel_row_lstm': 'digits_export', 'temporal_cnn_lstm': 'clips_export'}


def _onnx_op_counts(path):
    return collections.Counter(node.op_type for node in onnx_export._all_nodes(onnx.load(path).graph))


def _raw_pixel_inputs(run, examples):
    """The ONNX inputs of held-out examples; clips cut to every length 1..T in turn, the
    frames past each length zeroed."""
    if run.module.KIND != 'clip':
        return {'image': examples.inputs.astype(np.float32)}
    frames = examples.inputs.astype(np.float32)
    steps = frames.shape[1]
    lengths = np.minimum(np.arange(len(frames)) % steps + 1, examples.lengths).astype(np.int32)
    frames[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    return {'frames': frames, 'lengths': lengths}


@pytest.fixture(scope='module')
def saved_models(request, tmp_path_factory, digits_npz, clips_npz):
    """{name: (run, checkpoint, SavedModel path, ONNX inputs, what the SavedModel answers to
    them in a fresh process)} of each model in ONNX_EXPORTS trained 3 steps; one fresh
    process serves them all."""
    trained = {}
    for name, (model, overrides) in ONNX_EXPORTS.items():
        if name in SHARED_EXPORTS:
            run, saved_model, _ = request.getfixturevalue(SHARED_EXPORTS[name])
        else:
            data = clips_npz if model == 'temporal_cnn_lstm' else digits_npz
            run, saved_model, _ = briefly_trained_export(model, data, tmp_path_factory, overrides)
        trained[name] = run, saved_model, _raw_pixel_inputs(run, held_out_arrays(run, 16))
    served = serve_each_in_one_fresh_process(
        {name: (saved_model, verification.saved_model_signature(run.module.KIND), inputs)
         for name, (run, saved_model, inputs) in trained.items()}, tmp_path_factory.mktemp('served'))
    return {name: (run, tf.train.latest_checkpoint(run.model_dir), saved_model, inputs, served[name])
            for name, (run, saved_model, inputs) in trained.items()}


@pytest.mark.parametrize('name', sorted(ONNX_EXPORTS))
def test_each_model_exports_onnx_that_answers_like_its_saved_model(name, saved_models, tmp_path):
    run, checkpoint, saved_model, inputs, served = saved_models[name]
    path = onnx_export.export_onnx(run, checkpoint, str(tmp_path / 'onnx'), saved_model=saved_model)
    version = os.path.basename(saved_model)
    assert path == str(tmp_path / 'onnx' / version / 'model.onnx')
    with open(tmp_path / 'onnx' / version / 'verification.json') as stream:
        verification = json.load(stream)
    assert verification['examples'] == 64 and verification['largest_probability_difference'] <= 1e-4
    assert verification['argmax_differences'] == 0 and verification['opset'] >= 17
    if run.hparams['cell'] == 'lstm':
        # Every LSTM layer and direction becomes one ONNX LSTM op (a GRU stays a generic Loop).
        directions = 2 if run.hparams['bidirectional'] else 1
        assert _onnx_op_counts(path)['LSTM'] == run.hparams['rnn_layers'] * directions

    answered = onnx_serving.run_onnx(onnx_serving.session(path), inputs)
    assert set(answered) >= {'classes', 'probabilities', 'logits'}
    np.testing.assert_allclose(answered['probabilities'], served['probabilities'], atol=1e-4)
    np.testing.assert_array_equal(answered['classes'], served['classes'])


def test_a_file_that_disagrees_with_the_saved_model_is_removed(digits_export, digits_run, tmp_path):
    _, saved_model, _ = digits_export
    other = experiment.load_run(digits_run[0])  # the same model, trained longer by bin/train
    with pytest.raises(UserError, match=r'disagrees with the SavedModel .*largest probability difference'):
        # The ONNX file of another run's weights, checked against this run's SavedModel.
        onnx_export.export_onnx(other, tf.train.latest_checkpoint(other.model_dir), str(tmp_path / 'onnx'),
                                saved_model=saved_model)
    assert os.listdir(tmp_path / 'onnx') == []


def test_bin_train_writes_an_onnx_file_beside_each_saved_model(digits_run):
    """The digits run exports saved_model,onnx at each of its checkpoints."""
    model_dir, result = digits_run
    export_dir = pathlib.Path(model_dir) / 'export'
    assert f'ONNX files:                   {export_dir / "onnx"}' in result.stdout
    saved_versions = set(exporting.versions(export_dir / 'best')) | set(exporting.versions(export_dir / 'latest'))
    assert set(exporting.versions(export_dir / 'onnx')) == saved_versions
    for version in saved_versions:
        with open(export_dir / 'onnx' / str(version) / 'verification.json') as stream:
            verification = json.load(stream)
        assert verification['inputs'].startswith('64 examples of')       # the eval data, not noise
        assert os.path.basename(verification['saved_model']) == str(version)


def test_bin_predict_onnx_answers_like_saved_model(digits_run, tmp_path):
    model_dir = tmp_path / 'run'
    shutil.copytree(digits_run[0], model_dir)  # bin/export writes into it
    exported = run_cli('export', f'--model_dir={model_dir}', '--format=onnx').stdout.strip().splitlines()
    onnx_file = exported[-1]
    assert onnx_file.startswith(str(model_dir / 'export' / 'manual' / 'onnx')) and onnx_file.endswith('model.onnx')
    assert exported[-2].startswith('verified: ')
    assert run_cli('export', f'--model_dir={model_dir}', '--format=onnx').stdout.strip().splitlines() == exported
    assert len(exporting.versions(model_dir / 'export' / 'manual' / 'onnx')) == 1
    images = np.random.default_rng(3).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / 'images.npz', x=images)
    by_onnx = json.loads(run_cli('predict', f'--onnx={onnx_file}', f'--input={tmp_path / "images.npz"}').stdout)
    by_saved_model = json.loads(run_cli('predict', f'--saved_model={model_dir / "export" / "latest"}',
                                        f'--input={tmp_path / "images.npz"}').stdout)
    assert [row['classes'] for row in by_onnx['predictions']] == \
        [row['classes'] for row in by_saved_model['predictions']]
    np.testing.assert_allclose([row['probabilities'] for row in by_onnx['predictions']],
                               [row['probabilities'] for row in by_saved_model['predictions']], atol=1e-4)


def test_bin_predict_onnx_takes_a_version_or_a_base_directory_like_the_file(digits_run, tmp_path):
    onnx_base = pathlib.Path(digits_run[0]) / 'export' / 'onnx'
    newest = onnx_base / str(exporting.versions(onnx_base)[-1])
    images = np.random.default_rng(4).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / 'images.npz', x=images)
    answers = [run_cli('predict', f'--onnx={path}', f'--input={tmp_path / "images.npz"}').stdout
               for path in (newest / 'model.onnx', newest, onnx_base)]
    assert answers[1] == answers[0] and answers[2] == answers[0]


def test_bin_predict_onnx_names_the_signatures_there_are_for_one_that_is_not(digits_run, tmp_path):
    onnx_base = pathlib.Path(digits_run[0]) / 'export' / 'onnx'
    newest = onnx_base / str(exporting.versions(onnx_base)[-1]) / 'model.onnx'
    (tmp_path / 'body.json').write_text(json.dumps({'instances': [[[0.0] * 28] * 28]}))
    result = run_cli('predict', f'--onnx={onnx_base}', f'--request={tmp_path / "body.json"}',
                     '--signature=classification', check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: the ONNX model at {newest} has no signature 'classification'; "
                                     'it has: serving_default')


def test_clips_answer_bin_predict_requests_like_the_saved_model(tmp_path, clips_export):
    run, saved_model, examples = clips_export
    onnx_file = onnx_export.export_onnx(run, tf.train.latest_checkpoint(run.model_dir), str(tmp_path / 'onnx'),
                                        saved_model=saved_model)
    inputs = _raw_pixel_inputs(run, held_out_arrays(run, 4))
    for signature, body in [('predict_with_lengths', {'inputs': {name: value.tolist() for name, value in inputs.items()}}),
                            ('serving_default', {'instances': inputs['frames'].tolist()})]:
        classes, probabilities = _classes_and_probabilities(
            predicting.run_request(onnx_serving.load(onnx_file), signature, body))
        expected_classes, expected_probabilities = _classes_and_probabilities(
            predicting.run_request(predicting.load(saved_model), signature, body))
        assert classes == expected_classes
        np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-4)


def _classes_and_probabilities(response):
    """(classes, probabilities) of a REST response in either format."""
    if 'outputs' in response:
        return response['outputs']['classes'], np.array(response['outputs']['probabilities'])
    rows = response['predictions']
    return [row['classes'] for row in rows], np.array([row['probabilities'] for row in rows])


def test_bad_onnx_files_and_inputs_are_one_line(tmp_path, clips_export):
    run, saved_model, _ = clips_export
    onnx_file = onnx_export.export_onnx(run, tf.train.latest_checkpoint(run.model_dir), str(tmp_path / 'onnx'),
                                        saved_model=saved_model)
    with open(onnx_file, 'rb') as stream:
        (tmp_path / 'truncated.onnx').write_bytes(stream.read()[:2000])
    (tmp_path / 'text.onnx').write_text('not a model')
    (tmp_path / 'no_versions').mkdir()
    for path, message in [(tmp_path / 'missing.onnx', 'no ONNX model at'),
                          (tmp_path / 'no_versions', 'neither model.onnx nor integer version directories'),
                          (tmp_path / 'truncated.onnx', 'cannot load .* as an ONNX model'),
                          (tmp_path / 'text.onnx', 'cannot load .* as an ONNX model')]:
        with pytest.raises(UserError, match=message):
            onnx_serving.load(str(path))
    loaded = onnx_serving.load(onnx_file)
    frames = np.zeros([2, 3, 32, 32, 1], np.float32)
    for body, message in [
            ({'inputs': {'frames': np.zeros([2, 3, 28, 28, 1]).tolist(), 'lengths': [1, 1]}}, 'shape .* does not fit'),
            ({'inputs': {'frames': frames.tolist(), 'lengths': [1, 4]}}, 'a length beyond the 3 frames'),
            ({'inputs': {'frames': frames.tolist(), 'lengths': [0, 1]}}, 'an empty clip'),
            ({'inputs': {'frames': (frames * np.nan).tolist(), 'lengths': [1, 1]}}, 'NaN or infinite pixel'),
            ({'inputs': {'frames': frames.tolist(), 'lengths': ['a', 'b']}}, 'cannot convert to int32')]:
        with pytest.raises(UserError, match=message):
            predicting.run_request(loaded, 'predict_with_lengths', body)
    result = run_cli('predict', f'--onnx={tmp_path / "truncated.onnx"}', '--request=body.json', check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count('\n') == 0 and 'as an ONNX model' in result.stderr


# A user's model_fn whose serving graph holds Lgamma, which ONNX has no op for.
UNCONVERTIBLE_MODEL = '''
import tensorflow as tf

KIND = 'image'


def model_fn(features, labels, mode, params):
    pixels = tf.reshape(features['image'], [-1, params['height'] * params['width'] * params['channels']])
    logits = tf.compat.v1.layers.dense(tf.math.lgamma(pixels / 255.0 + 1.0), params['num_classes'])
    predictions = {'classes': tf.argmax(logits, axis=1), 'probabilities': tf.nn.softmax(logits),
                   'logits': logits}
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions=predictions)
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    train_op = tf.compat.v1.train.AdamOptimizer(0.01).minimize(
        loss, global_step=tf.compat.v1.train.get_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op, predictions=predictions)
'''


def test_a_graph_with_an_op_onnx_lacks_is_refused_leaving_nothing(tmp_path, digits_npz):
    (tmp_path / 'lgamma_model.py').write_text(textwrap.dedent(UNCONVERTIBLE_MODEL))
    model_dir = tmp_path / 'run'
    run_cli('train', '--model=lgamma_model:model_fn', f'--data={digits_npz}', f'--model_dir={model_dir}',
            '--train_steps=2', '--checkpoint_every=2', cwd=tmp_path)
    saved_models_before = sorted(os.listdir(model_dir / 'export' / 'latest'))
    result = run_cli('export', f'--model_dir={model_dir}', '--format=onnx', check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: the serving graph holds ops with no ONNX mapping: Lgamma'
    assert os.listdir(model_dir / 'export' / 'manual' / 'onnx') == []
    assert sorted(os.listdir(model_dir / 'export' / 'latest')) == saved_models_before
