"""SavedModels for TensorFlow Serving: the export itself, warm-up requests, and the
best / latest exporters that train_and_evaluate runs after each evaluation.

The Estimator's own export names extra signatures `receiver:output`; this one writes
exactly the signatures estimator_models.serving.receivers declares, from the same model_fn
in PREDICT mode, so a served prediction is an Estimator prediction.
"""

import contextlib
import hashlib
import json
import os
import shutil
import time

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, input_pb2, model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from estimator_models.layers import regions
from estimator_models.run_description import Run
from estimator_models.serving import receivers
from input_fns import BOXES_KEY, CLIP, FRAMES_KEY, IMAGE_KEY, NUM_BOXES_KEY

WARMUP_FILE = 'tf_serving_warmup_requests'
EVAL_RESULT_FILE = 'eval_result.json'
CHECKPOINT_FILE = 'checkpoint.json'
EXTRA_DIR = 'assets.extra'
SAVED_MODEL_CHECKPOINT_RECORD = os.path.join(EXTRA_DIR, CHECKPOINT_FILE)


def export_saved_model(run: Run, checkpoint_path, export_base, eval_result=None):
    """Writes the checkpoint's SavedModel to export_base/<version> and returns that path.

    It is written under a temporary name and renamed when complete, so a server
    watching export_base never loads half an export; the version is reserved
    (reserve_version), so an export made beside another never takes its number.
    `eval_result`, when given, is kept in assets.extra/eval_result.json, and the
    checkpoint's record in assets.extra/checkpoint.json. A base holds one version of a
    checkpoint: when export_base has one already (exported_version), its path is
    returned and nothing is written.
    """
    identity = checkpoint_identity(checkpoint_path)
    existing = exported_version(export_base, identity, SAVED_MODEL_CHECKPOINT_RECORD)
    if existing is not None:
        return existing
    version, temporary_path = reserve_version(export_base)
    final_path = os.path.join(export_base, str(version))
    try:
        _write_saved_model(run, checkpoint_path, temporary_path)
        write_checkpoint_record(os.path.join(temporary_path, SAVED_MODEL_CHECKPOINT_RECORD), checkpoint_path,
                                identity)
        if eval_result is not None:
            write_json(os.path.join(temporary_path, EXTRA_DIR, EVAL_RESULT_FILE), numbers_only(eval_result))
        os.rename(temporary_path, final_path)
    except BaseException:
        shutil.rmtree(temporary_path, ignore_errors=True)
        raise
    return final_path


def checkpoint_identity(checkpoint_path):
    """What tells a checkpoint from any other, wherever it was copied to: its global step
    and a digest of its index file, which holds a checksum of every variable's value."""
    with tf.io.gfile.GFile(checkpoint_path + '.index', 'rb') as stream:
        digest = hashlib.sha256(stream.read()).hexdigest()
    return {'global_step': int(tf.train.load_variable(checkpoint_path, 'global_step')), 'index_sha256': digest}


def write_checkpoint_record(path, checkpoint_path, identity):
    """The JSON file at `path` that names the checkpoint an export was made from, with its
    checkpoint_identity."""
    write_json(path, dict(identity, checkpoint=checkpoint_path))


def exported_version(export_base, identity, record_file):
    """The newest version directory under export_base exported from the checkpoint of
    `identity` (checkpoint_identity), as the record at `record_file` in each version
    (write_checkpoint_record) says; None if there is none."""
    for version in reversed(versions(export_base)):
        path = os.path.join(export_base, str(version))
        recorded = read_json(os.path.join(path, record_file)) or {}
        if all(recorded.get(key) == value for key, value in identity.items()):
            return path
    return None


def read_json(path):
    """The JSON value in the file at `path`; None when it is missing or not JSON."""
    try:
        with open(path) as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


def write_json(path, value):
    with open(path, 'w') as stream:
        json.dump(value, stream, sort_keys=True)


def numbers_only(eval_result):
    """An eval result as Python numbers, without its summary-proto entries (bytes for
    TensorBoard, not people)."""
    return {key: value.item() if hasattr(value, 'item') else value
            for key, value in eval_result.items() if not isinstance(value, bytes)}


def _write_saved_model(run, checkpoint_path, path):
    # A graph of its own: exporters run inside train_and_evaluate, whose graph is finalized.
    with tf.Graph().as_default():
        features, signature_inputs = receivers.receivers(run.module.KIND, run.hparams)
        spec = run.module.model_fn(features, None, tf.estimator.ModeKeys.PREDICT, run.hparams)
        signatures = receivers.signature_defs(signature_inputs, spec.predictions, run.class_names)
        blank_image = tf.io.encode_png(
            tf.zeros([run.hparams[key] for key in ('height', 'width', 'channels')], tf.uint8))
        saver = tf.compat.v1.train.Saver(sharded=True)
        with tf.compat.v1.Session() as session:
            saver.restore(session, checkpoint_path)
            builder = tf.compat.v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(
                session, [tf.saved_model.SERVING], signature_def_map=signatures,
                saver=saver, strip_default_attrs=True)
            builder.save()
            blank_png = session.run(blank_image)
    os.makedirs(os.path.join(path, EXTRA_DIR))
    write_warmup_requests(os.path.join(path, EXTRA_DIR, WARMUP_FILE), run, blank_png, signature_inputs)


def versions(export_base):
    """The integer version directories under export_base, oldest first."""
    if not os.path.isdir(export_base):
        return []
    return sorted(int(name) for name in os.listdir(export_base) if name.isdigit())


def next_version(export_base):
    """Seconds since the epoch, like the Estimator's versions, but always increasing."""
    return max([int(time.time())] + [version + 1 for version in versions(export_base)])


def reserve_version(export_base):
    """(version, temporary directory): the first version from next_version on that no
    other export holds, in this process or another (a trainer's exporter beside
    bin/export). An export holds its version from the atomic creation of
    export_base/temp-<version> (which this makes, empty) to its rename to
    export_base/<version>, so a version taken either way is skipped."""
    os.makedirs(export_base, exist_ok=True)
    version = next_version(export_base)
    while True:
        temporary_path = os.path.join(export_base, f'temp-{version}')
        try:
            os.mkdir(temporary_path)
        except FileExistsError:
            version += 1
            continue
        if not os.path.exists(os.path.join(export_base, str(version))):
            return version, temporary_path
        os.rmdir(temporary_path)  # finished by another export since next_version looked
        version += 1


@contextlib.contextmanager
def renamed_when_complete(temporary_path, final_path):
    """Runs the block that fills temporary_path (reserve_version's), then renames it to
    final_path; removes it instead when the block raises."""
    try:
        yield
        os.rename(temporary_path, final_path)
    except BaseException:
        shutil.rmtree(temporary_path, ignore_errors=True)
        raise


def warmup_inputs(run, encoded, signature_inputs):
    """One small request per signature of `signature_inputs` (receivers' {signature key:
    {input name: tensor}}), of a blank image or a clip of two (`encoded`: one as PNG
    bytes): {signature key: {input name: numpy value}}, or a list of tf.Example for classify."""
    height, width, channels = (run.hparams[key] for key in ('height', 'width', 'channels'))
    pixels = np.zeros([1, height, width, channels], np.float32)
    values = {
        IMAGE_KEY: pixels,
        receivers.IMAGE_BYTES_KEY: np.array([encoded], object),
        FRAMES_KEY: pixels[:, np.newaxis].repeat(2, axis=1),
        receivers.LENGTHS_KEY: np.array([2], np.int32),
        receivers.FRAMES_BYTES_KEY: np.array([[encoded, encoded]], object),
        BOXES_KEY: np.array([[regions.WHOLE_IMAGE]], np.float32),
        NUM_BOXES_KEY: np.array([1], np.int32),
    }
    example = example_from_encoded([encoded, encoded] if run.module.KIND == CLIP else [encoded])
    return {key: [example] if key == receivers.CLASSIFY_SIGNATURE else {name: values[name] for name in inputs}
            for key, inputs in signature_inputs.items()}


def example_from_encoded(encoded_images):
    """A tf.Example in the project's schema: `image/encoded` holds one image, or a clip's frames."""
    return tf.train.Example(features=tf.train.Features(feature={
        receivers.ENCODED_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=encoded_images))}))


def write_warmup_requests(path, run, encoded, signature_inputs):
    """assets.extra/tf_serving_warmup_requests: a PredictionLog for each signature."""
    with tf.io.TFRecordWriter(path) as writer:
        for key, inputs in warmup_inputs(run, encoded, signature_inputs).items():
            spec = model_pb2.ModelSpec(signature_name=key)
            if key == receivers.CLASSIFY_SIGNATURE:
                request = classification_pb2.ClassificationRequest(
                    model_spec=spec, input=input_pb2.Input(
                        example_list=input_pb2.ExampleList(examples=inputs)))
                log = prediction_log_pb2.PredictionLog(
                    classify_log=prediction_log_pb2.ClassifyLog(request=request))
            else:
                request = predict_pb2.PredictRequest(model_spec=spec)
                for name, value in inputs.items():
                    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


class ServingExporter(tf.estimator.Exporter):
    """Exports after an evaluation into EXPORT_DIR/<name>/<version>, keeping the newest
    `keep` versions. With `only_if_better`, it exports only when the eval accuracy beats
    every export already there (read back from their assets.extra, so it survives restarts).
    `after_export(saved_model_path, checkpoint_path)`, when given, runs after each export
    (the ONNX export beside it).
    """

    def __init__(self, name, run, export_dir, keep, only_if_better=False, after_export=None):
        self._name = name
        self._run = run
        self._base = os.path.join(export_dir, name)
        self._keep = keep
        self._only_if_better = only_if_better
        self._after_export = after_export

    @property
    def name(self):
        return self._name

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        if self._only_if_better and not self._beats_existing(eval_result):
            return None
        path = export_saved_model(self._run, checkpoint_path, self._base, eval_result)
        for version in versions(self._base)[:-self._keep]:
            shutil.rmtree(os.path.join(self._base, str(version)), ignore_errors=True)
        if self._after_export is not None:
            self._after_export(path, checkpoint_path)
        return path

    def _beats_existing(self, eval_result):
        for version in versions(self._base):
            previous = read_json(os.path.join(self._base, str(version), EXTRA_DIR, EVAL_RESULT_FILE))
            if previous is not None and previous['accuracy'] >= eval_result['accuracy']:
                return False
        return True
