"""SavedModels for TensorFlow Serving: their signatures, their agreement with
Estimator.predict through every input route, their warm-up requests, and bin/predict
speaking the REST format."""

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from conftest import TINY, briefly_trained_export, run_cli
from estimator_models.errors import UserError
from estimator_models.running import experiment
from estimator_models.serving import exporting, predicting, receivers
from input_fns.sources.arrays import LabelledArrays

EXPECTED_SIGNATURES = {
    'image': {
        'serving_default': ('tensorflow/serving/predict', {'image': ('DT_FLOAT', [-1, 28, 28, 1])}),
        'predict_bytes': ('tensorflow/serving/predict', {'image_bytes': ('DT_STRING', [-1])}),
        'classification': ('tensorflow/serving/classify', {'inputs': ('DT_STRING', [-1])}),
    },
    'clip': {
        'serving_default': ('tensorflow/serving/predict', {'frames': ('DT_FLOAT', [-1, -1, 32, 32, 1])}),
        'predict_with_lengths': ('tensorflow/serving/predict', {
            'frames': ('DT_FLOAT', [-1, -1, 32, 32, 1]), 'lengths': ('DT_INT32', [-1])}),
        'predict_bytes': ('tensorflow/serving/predict', {'frames_bytes': ('DT_STRING', [-1, -1])}),
        'classification': ('tensorflow/serving/classify', {'inputs': ('DT_STRING', [-1])}),
    },
}
PYTHON_DTYPES = {'DT_FLOAT': 'float32', 'DT_INT32': 'int32', 'DT_STRING': 'string'}
# A fresh process looking at SavedModels as TensorFlow Serving's users do: for each path in
# argv, what the saved_model_cli command prints for `show --all` (its main, which ends in
# sys.exit), and the inputs of each signature once loaded.
LOOK_AT_EXPORTS = '''
import contextlib, io, json, sys
import tensorflow as tf
from tensorflow.python.tools import saved_model_cli
seen = {}
for path in sys.argv[1:]:
    shown = io.StringIO()
    sys.argv = ['saved_model_cli', 'show', '--all', '--dir', path]
    with contextlib.redirect_stdout(shown):
        try:
            saved_model_cli.main()
        except SystemExit as stopped:
            if stopped.code:
                raise
    loaded = tf.saved_model.load(path)
    seen[path] = [shown.getvalue(),
                  {key: {name: [spec.dtype.name, spec.shape.as_list()]
                         for name, spec in function.structured_input_signature[1].items()}
                   for key, function in loaded.signatures.items()}]
print(json.dumps(seen))
'''


@pytest.fixture(scope='module')
def exports(request, tmp_path_factory, digits_npz):
    """{model: (run, SavedModel path)} of each model trained 3 steps: conftest's
    digits_export and clips_export, and a cnn_lstm trained here."""
    shared = {'pixel_row_lstm': 'digits_export', 'temporal_cnn_lstm': 'clips_export'}
    return {model: (request.getfixturevalue(shared[model]) if model in shared
                    else briefly_trained_export(model, digits_npz, tmp_path_factory))[:2] for model in TINY}


@pytest.fixture(scope='module')
def seen_by_a_fresh_process(exports):
    """{model: (saved_model_cli's `show --all`, {signature: {input: [dtype, shape]}})} of
    each export, from one fresh process."""
    paths = {model: path for model, (_, path) in exports.items()}
    seen = json.loads(subprocess.run([sys.executable, '-c', LOOK_AT_EXPORTS, *paths.values()],
                                     capture_output=True, text=True, check=True).stdout)
    return {model: seen[path] for model, path in paths.items()}


def _probabilities(run, examples):
    return np.stack([row['probabilities'] for row in experiment.predict(run, examples)])


def _png(pixels):
    return tf.io.encode_png(tf.constant(pixels, tf.uint8)).numpy()


@pytest.mark.parametrize('model', list(TINY))
def test_signatures_as_a_fresh_process_sees_them(model, exports, seen_by_a_fresh_process):
    run, _ = exports[model]
    expected = EXPECTED_SIGNATURES[run.module.KIND]
    cli, loaded = seen_by_a_fresh_process[model]
    for key, (method, inputs) in expected.items():
        section = cli.split(f"signature_def['{key}']:")[1].split('signature_def[')[0]
        assert f'Method name is: {method}' in section
        for name, (dtype, shape) in inputs.items():
            assert f"inputs['{name}'] tensor_info:\n        dtype: {dtype}\n        shape: ({', '.join(map(str, shape))})" in section
    assert set(loaded) == set(expected)
    for key, (_, inputs) in expected.items():
        assert loaded[key] == {name: [PYTHON_DTYPES[dtype], [None if d == -1 else d for d in shape]]
                               for name, (dtype, shape) in inputs.items()}


def test_every_image_route_gives_the_estimator_probabilities(digits_export):
    run, path, held_out = digits_export
    examples = held_out.take(np.arange(6))
    expected = _probabilities(run, examples)
    signatures = tf.saved_model.load(path).signatures
    pixels = examples.inputs.astype(np.float32)
    pngs = [_png(image) for image in examples.inputs]
    jpegs = [tf.io.encode_jpeg(tf.constant(image), quality=95).numpy() for image in examples.inputs]
    routes = {
        'serving_default': signatures['serving_default'](image=tf.constant(pixels))['probabilities'],
        'png bytes': signatures['predict_bytes'](image_bytes=tf.constant(pngs))['probabilities'],
        'tf.Example': signatures['classification'](inputs=tf.constant(
            [exporting.example_from_encoded([png]).SerializeToString() for png in pngs]))['scores'],
    }
    for route, probabilities in routes.items():
        np.testing.assert_allclose(probabilities.numpy(), expected, atol=1e-5, err_msg=route)
    jpeg = signatures['predict_bytes'](image_bytes=tf.constant(jpegs))['probabilities'].numpy()
    np.testing.assert_allclose(jpeg, expected, atol=1e-2)
    classes = signatures['classification'](inputs=tf.constant(
        [exporting.example_from_encoded([pngs[0]]).SerializeToString()]))['classes'].numpy()
    assert [name.decode() for name in classes[0]] == run.class_names


def test_encoded_images_of_another_size_are_fitted_like_the_input_pipeline(digits_export):
    run, path, held_out = digits_export
    large = np.kron(held_out.inputs[:3, ..., 0], np.ones((2, 3), np.uint8))[..., np.newaxis]  # 56x84
    expected = _probabilities(run, LabelledArrays(large, held_out.labels[:3]))
    served = tf.saved_model.load(path).signatures['predict_bytes'](
        image_bytes=tf.constant([_png(image) for image in large]))['probabilities'].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_every_clip_route_gives_the_estimator_probabilities(clips_export):
    run, path, held_out = clips_export
    examples = held_out.take(np.argsort(held_out.lengths)[[0, 5, -1]])  # different lengths
    assert len(set(examples.lengths)) > 1
    expected = _probabilities(run, examples)
    signatures = tf.saved_model.load(path).signatures
    longest = examples.lengths.max()
    frames = examples.inputs[:, :longest].astype(np.float32)
    encoded = [[_png(frame) for frame in clip[:length]] for clip, length in zip(examples.inputs, examples.lengths)]
    padded_bytes = [clip + [b''] * (longest - len(clip)) for clip in encoded]
    routes = {
        'predict_with_lengths': signatures['predict_with_lengths'](
            frames=tf.constant(frames), lengths=tf.constant(examples.lengths))['probabilities'],
        'frames_bytes': signatures['predict_bytes'](frames_bytes=tf.constant(padded_bytes))['probabilities'],
        'tf.Example': signatures['classification'](inputs=tf.constant(
            [exporting.example_from_encoded(clip).SerializeToString() for clip in encoded]))['scores'],
    }
    for route, probabilities in routes.items():
        np.testing.assert_allclose(probabilities.numpy(), expected, atol=1e-5, err_msg=route)
    full = held_out.take(np.flatnonzero(held_out.lengths == held_out.inputs.shape[1])[:2])
    served = signatures['serving_default'](frames=tf.constant(full.inputs.astype(np.float32)))
    np.testing.assert_allclose(served['probabilities'].numpy(), _probabilities(run, full), atol=1e-5)


@pytest.mark.parametrize('export_fixture', ['digits_export', 'clips_export'])
def test_warmup_requests_cover_every_signature_and_replay(request, export_fixture):
    _, path, _ = request.getfixturevalue(export_fixture)
    signatures = tf.saved_model.load(path).signatures
    warmup = os.path.join(path, 'assets.extra', 'tf_serving_warmup_requests')
    logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(warmup)]
    replayed = []
    for log in logs:
        if log.HasField('classify_log'):
            request_proto = log.classify_log.request
            serialized = [example.SerializeToString() for example in request_proto.input.example_list.examples]
            outputs = signatures[request_proto.model_spec.signature_name](inputs=tf.constant(serialized))
        else:
            request_proto = log.predict_log.request
            outputs = signatures[request_proto.model_spec.signature_name](
                **{name: tf.constant(tf.make_ndarray(tensor)) for name, tensor in request_proto.inputs.items()})
        assert all(np.isfinite(value.numpy()).all() for value in outputs.values() if value.dtype != tf.string)
        replayed.append(request_proto.model_spec.signature_name)
    assert sorted(replayed) == sorted(signatures)


def _request(tmp_path, body):
    path = tmp_path / 'request.json'
    path.write_text(json.dumps(body))
    return str(path)


def test_bin_predict_answers_tf_serving_rest_requests(digits_export, tmp_path):
    run, path, held_out = digits_export
    expected = _probabilities(run, held_out.take(np.arange(2)))
    b64 = [{'b64': base64.b64encode(_png(image)).decode()} for image in held_out.inputs[:2]]
    bodies = {
        'serving_default': {'instances': held_out.inputs[:2].astype(float).tolist()},
        'predict_bytes': {'instances': [{'image_bytes': value} for value in b64]},
    }
    for signature, body in bodies.items():
        result = run_cli('predict', f'--saved_model={os.path.dirname(path)}',
                         f'--request={_request(tmp_path, body)}', f'--signature={signature}')
        rows = json.loads(result.stdout)['predictions']
        np.testing.assert_allclose([row['probabilities'] for row in rows], expected, atol=1e-5)
    columns = run_cli('predict', f'--saved_model={path}', f'--request={_request(tmp_path, {"inputs": {"image_bytes": b64}})}',
                      '--signature=predict_bytes')
    np.testing.assert_allclose(json.loads(columns.stdout)['outputs']['probabilities'], expected, atol=1e-5)
    classify = run_cli('predict', f'--saved_model={path}', '--signature=classification',
                       f'--request={_request(tmp_path, {"examples": [{"image/encoded": value} for value in b64]})}')
    results = json.loads(classify.stdout)['results']
    assert [[label for label, _ in row] for row in results] == [run.class_names] * 2
    np.testing.assert_allclose([[score for _, score in row] for row in results], expected, atol=1e-5)


@pytest.mark.parametrize('body, signature, message', [
    ({'instances': [[1.0, 2.0]]}, 'serving_default', 'input image: shape [1, 2] does not fit'),
    ({'instances': [{'picture': 1}]}, 'serving_default', 'input tensor alias not found in signature: picture'),
    ({'instances': [{'b64': base64.b64encode(b'not a png').decode()}]}, 'predict_bytes', 'image'),
    ({'instances': [['a', 'b']]}, 'serving_default', 'cannot convert to float32'),
    ({'instances': [[0.0]]}, 'nope', "has no signature 'nope'; it has: classification, predict_bytes, serving_default"),
    ({'rows': []}, 'serving_default', 'request body needs'),
])
def test_bin_predict_rejects_malformed_requests_in_one_line(digits_export, tmp_path, body, signature, message):
    _, path, _ = digits_export
    result = run_cli('predict', f'--saved_model={path}', f'--request={_request(tmp_path, body)}',
                     f'--signature={signature}', check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    assert message in lines[0]


def test_bin_predict_names_the_signatures_there_are_for_one_that_is_not(digits_export, tmp_path):
    _, path, held_out = digits_export
    np.savez(tmp_path / 'digits.npz', x=held_out.inputs[:2])
    result = run_cli('predict', f'--saved_model={os.path.dirname(path)}', f'--input={tmp_path / "digits.npz"}',
                     '--signature=nosuch', check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: the SavedModel at {path} has no signature 'nosuch'; "
                                     'it has: classification, predict_bytes, serving_default')


def test_a_base_directory_serves_its_highest_version(digits_export):
    _, path, _ = digits_export
    assert predicting.resolve_version(os.path.dirname(path)) == path
    assert receivers.CLASSIFY_SIGNATURE in predicting.load(os.path.dirname(path)).signatures


def _write_tfrecord(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    return str(path)


def test_tfrecord_input_files_of_images_answer_like_the_estimator(digits_export, tmp_path):
    run, path, held_out = digits_export
    examples = held_out.take(np.arange(3))
    records = _write_tfrecord(tmp_path / 'digits.tfrecord', [tf.train.Example(features=tf.train.Features(feature={
        'image/encoded': tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(image)])),
        'image/class/label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
        for image, label in zip(examples.inputs, examples.labels)])
    loaded = predicting.load(path)
    expected = _probabilities(run, examples)
    for signature in ('serving_default', 'predict_bytes'):
        body = predicting.file_request(loaded, signature, [records])
        rows = predicting.run_request(loaded, signature, body)['predictions']
        np.testing.assert_allclose([row['probabilities'] for row in rows], expected, atol=1e-5)


def test_tfrecord_input_files_of_clips_keep_each_clips_length(clips_export, tmp_path):
    run, path, held_out = clips_export
    examples = held_out.take(np.argsort(held_out.lengths)[[0, -1]])  # the shortest and longest
    records = _write_tfrecord(tmp_path / 'clips.tfrecord-00000-of-00001', [tf.train.SequenceExample(
        context=tf.train.Features(feature={
            'clip/label/index': tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}),
        feature_lists=tf.train.FeatureLists(feature_list={'image/encoded': tf.train.FeatureList(feature=[
            tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(frame)])) for frame in clip[:length]])}))
        for clip, length, label in zip(examples.inputs, examples.lengths, examples.labels)])
    loaded = predicting.load(path)
    expected = _probabilities(run, examples)
    for signature in ('predict_with_lengths', 'predict_bytes'):
        body = predicting.file_request(loaded, signature, [records])
        response = predicting.run_request(loaded, signature, body)
        rows = response['outputs']['probabilities'] if 'outputs' in response else [
            row['probabilities'] for row in response['predictions']]
        np.testing.assert_allclose(rows, expected, atol=1e-5, err_msg=signature)
    classified = predicting.run_request(loaded, 'classification',
                                        predicting.file_request(loaded, 'classification', [records]))
    np.testing.assert_allclose([[score for _, score in row] for row in classified['results']], expected, atol=1e-5)
    with pytest.raises(UserError, match='takes clips of one length; these have'):
        predicting.file_request(loaded, 'serving_default', [records])


def test_bin_predict_refuses_a_file_that_is_not_tfrecord(digits_export, tmp_path):
    _, path, _ = digits_export
    bad = tmp_path / 'broken.tfrecord'
    bad.write_bytes(b'definitely not a TFRecord file')
    result = run_cli('predict', f'--saved_model={path}', f'--input={bad}', check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f'error: {bad} is not a TFRecord file']
