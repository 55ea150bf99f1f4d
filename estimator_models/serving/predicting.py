"""Client side of an export: load a SavedModel, read input files, answer like TF Serving.

Whatever a request body or an input file holds, the answer is a response or a UserError
of one line naming the problem; nothing here unpickles or evaluates data.
"""

import base64
import os
import zipfile

import numpy as np
import tensorflow as tf
from google.protobuf import message

from estimator_models.errors import UserError, assertion_text
from estimator_models.layers import regions
from estimator_models.serving import exporting, receivers
from input_fns import BOXES_KEY, CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY, NUM_BOXES_KEY, preprocess
from input_fns.sources import arrays

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')
# Request bodies: the deepest nesting a request needs ({"instances": [{"frames": T x H x W x
# C lists}]}, with room to spare), and the most values it may carry (2**26 float32 values
# are 256 MB once converted). Deeper or larger bodies are refused before any conversion.
MAX_REQUEST_DEPTH = 12
MAX_REQUEST_VALUES = 2 ** 26
SAVED_MODEL_FILE = 'saved_model.pb'


def resolve_version(path, model_file=SAVED_MODEL_FILE, described='SavedModel'):
    """The version directory to load: `path` itself when it holds `model_file`, else its
    highest integer version that does (TF Serving's rule); `described` names the model in
    the UserError when there is none."""
    if os.path.exists(os.path.join(path, model_file)):
        return path
    if not os.path.isdir(path):
        raise UserError(f'no {described} at {path}')
    holding = [version for version in exporting.versions(path)
               if os.path.exists(os.path.join(path, str(version), model_file))]
    if not holding:
        raise UserError(f'no {described} at {path}: neither {model_file} nor integer version directories')
    return os.path.join(path, str(holding[-1]))


def load(path):
    """The SavedModel at `path` (a version directory or a base of versions)."""
    return LoadedSavedModel(resolve_version(path))


class LoadedSavedModel:
    """A SavedModel as run_request and file_request use it: its `signatures`, and
    `described` (where it was loaded from) for messages."""

    def __init__(self, path):
        self.described = f'the SavedModel at {path}'
        # The loaded object owns the variables its signatures read: it lives as long as they do.
        self._loaded = tf.saved_model.load(path)
        self.signatures = self._loaded.signatures


def read_inputs(paths, kind, frame_shape):
    """Pixels of every input file, fitted to `frame_shape` (H, W, C).

    Files: `.npz` (its `x` or `x_test` array), images (PNG, JPEG, BMP, GIF), TFRecord
    files (`*.tfrecord*`, the project's schema), and, for clips, directories of frame
    images (in name order).

    Returns (float32 [N, H, W, C] or [N, T, H, W, C], int [N] frames of each clip):
    shorter clips are padded with black frames to the longest.
    """
    height, width, channels = frame_shape
    fit = preprocess.fit_frames if kind == CLIP else preprocess.fit_images
    fitted = [fit(tf.constant(batch), height, width, channels, 'resize').numpy()
              for path in paths for batch in _read_one(path, kind)]
    lengths = np.concatenate([[batch.shape[1] if kind == CLIP else 1] * len(batch) for batch in fitted])
    if kind == CLIP:
        longest = lengths.max()
        fitted = [np.pad(batch, [(0, 0), (0, longest - batch.shape[1])] + [(0, 0)] * 3) for batch in fitted]
    return np.concatenate(fitted), lengths


def _read_one(path, kind):
    """One input file's pixels as a list of float32 batches [n, H, W, C] or [n, T, H, W, C]
    (sizes may differ between batches; they are fitted one batch at a time)."""
    if path.endswith('.npz'):
        if not os.path.isfile(path):
            raise UserError(f'no such file: {path}')
        return [arrays.with_channel_axis(_npz_inputs(path), kind).astype(np.float32)]
    return [_decoded_example(frames, kind, path)[np.newaxis] for frames in _encoded(path, kind)]


def _npz_inputs(path):
    """The `x` (or `x_test`) array of an .npz file; never unpickles (object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as contents:
            key = 'x' if 'x' in contents.files else 'x_test'
            if key not in contents.files:
                raise UserError(f'{path}: no array x or x_test')
            inputs = contents[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f'cannot read {path} as .npz: {_first_line(str(error))}') from None
    if inputs.dtype != np.uint8 and not np.issubdtype(inputs.dtype, np.floating):
        raise UserError(f'{path}: pixels must be uint8 or float, got {inputs.dtype}')
    return inputs


def _decoded_example(frames, kind, path):
    """float32 [H, W, C] of an image, or [T, H, W, C] of a clip, from its encoded frames."""
    if kind == CLIP:
        decoded = [_decode(frame, path) for frame in frames]
        if len({frame.shape for frame in decoded}) > 1:
            raise UserError(f'{path}: the frames of a clip differ in size')
        return np.stack(decoded)
    return _decode(frames[0], path)


def _decode(encoded, path):
    """float32 [h, w, c]; refused, before decoding, when the header claims more than
    preprocess.DEFAULT_MAX_IMAGE_PIXELS (the SavedModel does not tell its run's limit)."""
    try:
        return preprocess.checked_decode_image(encoded).numpy().astype(np.float32)
    except tf.errors.InvalidArgumentError as error:
        raise UserError(f'cannot decode {path} as an image: {_cause(error.message)}') from None


def signature_kind_and_shape(loaded):
    """(IMAGE or CLIP, (H, W, C)) from the raw-pixel serving_default signature."""
    specs = loaded.signatures['serving_default'].structured_input_signature[1]
    if FRAMES_KEY in specs:
        return CLIP, tuple(specs[FRAMES_KEY].shape[2:])
    if IMAGE_KEY in specs:
        return IMAGE, tuple(specs[IMAGE_KEY].shape[1:])
    raise UserError(f'serving_default takes {", ".join(specs)}, not raw pixels')


def file_request(loaded, signature_name, paths):
    """A REST request body for `signature_name` from input files."""
    kind, frame_shape = signature_kind_and_shape(loaded)
    if signature_name == 'classification':
        clips = [clip for path in paths for clip in _encoded(path, kind)]
        return {'examples': [{receivers.ENCODED_KEY: [_b64(frame) for frame in clip]} for clip in clips]}
    inputs = input_specs(_signature(loaded, signature_name))
    if set(inputs) & {'image_bytes', 'frames_bytes'}:
        clips = [[_b64(frame) for frame in clip] for path in paths for clip in _encoded(path, kind)]
        if kind == IMAGE:
            return _with_whole_image_boxes({'image_bytes': [clip[0] for clip in clips]}, inputs)
        longest = max(len(clip) for clip in clips)
        return {'instances': [clip + [{'b64': ''}] * (longest - len(clip)) for clip in clips]}
    pixels, lengths = read_inputs(paths, kind, frame_shape)
    if kind == IMAGE and BOXES_KEY in inputs:
        return _with_whole_image_boxes({IMAGE_KEY: pixels.tolist()}, inputs)
    if 'lengths' in inputs:
        return {'inputs': {FRAMES_KEY: pixels.tolist(), 'lengths': lengths.tolist()}}
    if len(set(lengths.tolist())) > 1:
        raise UserError(f'signature {signature_name} takes clips of one length; these have '
                        f'{lengths.min()} to {lengths.max()} frames (use --signature=predict_with_lengths)')
    return {'instances': pixels.tolist()}


def _with_whole_image_boxes(columns, inputs):
    """A request of images `columns`, each with one box over the whole image when the
    signature takes boxes (files carry none)."""
    if BOXES_KEY not in inputs:
        return {'instances': next(iter(columns.values()))}
    count = len(next(iter(columns.values())))
    return {'inputs': dict(columns, **{BOXES_KEY: [list(regions.WHOLE_IMAGE)] * count,
                                       NUM_BOXES_KEY: [1] * count})}


def _encoded(path, kind):
    """The encoded frames of each example in one input file: [[image bytes], ...] for
    images, [[frame bytes, ...], ...] for clips (one per clip, frames in order)."""
    if _is_tfrecord(path):
        return _tfrecord_encoded(path, kind)
    if kind == CLIP and os.path.isdir(path):
        names = sorted(name for name in os.listdir(path) if name.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise UserError(f'no frame images in {path}')
        return [[_read_bytes(os.path.join(path, name)) for name in names]]
    if kind == CLIP and not path.endswith('.npz'):
        raise UserError(f'a clip is a directory of frame images, a TFRecord file or a .npz, not {path}')
    if not path.lower().endswith(IMAGE_SUFFIXES):
        raise UserError(f'{path}: this signature takes image files, TFRecord files' +
                        (' or directories of frames' if kind == CLIP else ''))
    return [[_read_bytes(path)]]


def _read_bytes(path):
    if not os.path.isfile(path):
        raise UserError(f'no such file: {path}')
    with open(path, 'rb') as stream:
        return stream.read()


def _is_tfrecord(path):
    return '.tfrecord' in os.path.basename(path)


def _tfrecord_encoded(path, kind):
    """Each record's encoded frames: `image/encoded` of a tf.Example (images), or the
    `image/encoded` feature list of a tf.SequenceExample (clips)."""
    if not os.path.isfile(path):
        raise UserError(f'no such file: {path}')
    try:
        records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    except tf.errors.DataLossError:
        raise UserError(f'{path} is not a TFRecord file') from None
    if not records:
        raise UserError(f'{path} holds no records')
    return [_record_frames(record, kind, path) for record in records]


def _record_frames(record, kind, path):
    try:
        if kind == CLIP:
            clip = tf.train.SequenceExample.FromString(record)
            steps = clip.feature_lists.feature_list[receivers.ENCODED_KEY].feature
            frames = [step.bytes_list.value[0] for step in steps if step.bytes_list.value]
        else:
            feature = tf.train.Example.FromString(record).features.feature[receivers.ENCODED_KEY]
            frames = list(feature.bytes_list.value[:1])
    except message.DecodeError:
        expected = 'SequenceExample' if kind == CLIP else 'Example'
        raise UserError(f'{path}: a record is not a tf.{expected}') from None
    if not frames:
        raise UserError(f'{path}: a record has no {receivers.ENCODED_KEY}' +
                        (' feature list' if kind == CLIP else ''))
    return frames


def _b64(data):
    return {'b64': base64.b64encode(data).decode('ascii')}


def _signature(loaded, name):
    if name not in loaded.signatures:
        raise UserError(f"{loaded.described} has no signature '{name}'; it has: "
                        f"{', '.join(sorted(loaded.signatures))}")
    return loaded.signatures[name]


def input_name(kind):
    return FRAMES_KEY if kind == CLIP else IMAGE_KEY


def input_specs(signature):
    return signature.structured_input_signature[1]


def run_request(loaded, signature_name, body):
    """Answers one TF Serving REST request body as the server would: the response body.

    A `signature_name` in the body wins over the `signature_name` argument, as on the server.
    """
    if not isinstance(body, dict):
        raise UserError('request body must be a JSON object')
    _check_size(body)
    signature_name = body.get('signature_name', signature_name)
    if not isinstance(signature_name, str):
        raise UserError('"signature_name" must be a string')
    signature = _signature(loaded, signature_name)
    if 'examples' in body:
        if signature_name != 'classification':
            raise UserError(f'"examples" requests go to the classification signature, not {signature_name}')
        return {'results': _classify(signature, body['examples'])}
    specs = input_specs(signature)
    if 'instances' in body:
        columns = _rows_to_columns(body['instances'], specs)
        outputs = _call(signature, specs, columns)
        return {'predictions': _columns_to_rows(outputs)}
    if 'inputs' in body:
        inputs = body['inputs']
        columns = inputs if isinstance(inputs, dict) else {_only_input(specs): inputs}
        outputs = _call(signature, specs, columns)
        return {'outputs': {name: value.tolist() for name, value in outputs.items()}}
    raise UserError('request body needs "instances", "inputs" or "examples"')


def _check_size(body):
    """Refuses a body nested deeper than MAX_REQUEST_DEPTH or holding more than
    MAX_REQUEST_VALUES values, walking it without recursion (JSON may nest deeper than
    Python's recursion limit) and stopping at the first excess."""
    pending, values = [(body, 1)], 0
    while pending:
        value, depth = pending.pop()
        if depth > MAX_REQUEST_DEPTH:
            raise UserError(f'request nests more than {MAX_REQUEST_DEPTH} levels deep')
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        values += len(children) if children else 1
        if values > MAX_REQUEST_VALUES:
            raise UserError(f'request holds more than {MAX_REQUEST_VALUES} values; send fewer '
                            'examples per request')
        pending.extend((child, depth + 1) for child in children)


def _only_input(specs):
    if len(specs) != 1:
        raise UserError(f'the signature takes several inputs ({", ".join(sorted(specs))}); name them')
    return next(iter(specs))


def _rows_to_columns(instances, specs):
    if not isinstance(instances, list) or not instances:
        raise UserError('"instances" must be a non-empty list')
    if all(isinstance(row, dict) and 'b64' not in row for row in instances):
        names = set(instances[0])
        if any(set(row) != names for row in instances):
            raise UserError('every instance must name the same inputs')
        return {name: [row[name] for row in instances] for name in names}
    return {_only_input(specs): instances}


def _call(signature, specs, columns):
    unknown = sorted(set(columns) - set(specs))
    if unknown:
        raise UserError(f'input tensor alias not found in signature: {unknown[0]}. Inputs expected '
                        f'to be in the set {{{",".join(sorted(specs))}}}.')
    if set(columns) != set(specs):
        raise UserError(f'input size does not match signature: {len(columns)}!={len(specs)}; '
                        f'missing {",".join(sorted(set(specs) - set(columns)))}')
    tensors = {name: _tensor(name, _decode_b64(value), specs[name]) for name, value in columns.items()}
    try:
        return {name: value.numpy() for name, value in signature(**tensors).items()}
    except (tf.errors.OpError, ValueError, TypeError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        raise UserError(_cause(message)) from None


def _cause(message):
    """The line of a TensorFlow error that says what went wrong, without the graph trace:
    an assertion's own message, else the first line that is not trace."""
    assertion = assertion_text(message)
    if assertion:
        return assertion
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(('Graph execution error', 'Detected at node', 'File ', '[[', '<stack')):
            return line.rstrip(':')
    return _first_line(message)


def _first_line(message):
    lines = message.strip().splitlines()
    return lines[0] if lines else 'unknown error'


def _tensor(name, value, spec):
    """A request's value for one input -> a tensor of the input's dtype and shape, or a
    UserError saying which input does not convert or fit."""
    try:
        array = np.array(value, dtype=object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f'input {name}: cannot convert to {spec.dtype.name}') from None
    if not spec.shape.is_compatible_with(array.shape):
        raise UserError(f'input {name}: shape {list(array.shape)} does not fit {spec.shape}')
    if array.size == 0:
        raise UserError(f'input {name} is empty (shape {list(array.shape)})')
    if spec.dtype == tf.string and not all(isinstance(item, bytes) for item in array.flat):
        raise UserError(f'input {name}: string values must be base64 objects {{"b64": "..."}}')
    return tf.constant(array, dtype=spec.dtype)


def _decode_b64(value):
    """Replaces every {"b64": ...} by its bytes, as TF Serving does for string inputs."""
    if isinstance(value, dict) and set(value) == {'b64'}:
        try:
            return base64.b64decode(value['b64'], validate=True)
        except (ValueError, TypeError):  # binascii.Error is a ValueError
            raise UserError('invalid base64 in a "b64" value') from None
    if isinstance(value, list):
        return [_decode_b64(item) for item in value]
    return value


def _columns_to_rows(outputs):
    names = sorted(outputs)
    return [{name: outputs[name][row].tolist() for name in names}
            for row in range(len(outputs[names[0]]))]


def _classify(signature, examples):
    if not isinstance(examples, list) or not examples:
        raise UserError('"examples" must be a non-empty list')
    serialized = [_example(example).SerializeToString() for example in examples]
    outputs = _call(signature, input_specs(signature), {'inputs': serialized})
    return [[[label.decode(), float(score)] for label, score in zip(labels, scores)]
            for labels, scores in zip(outputs['classes'], outputs['scores'])]


def _example(features):
    """A tf.Example from REST's JSON form: {"name": value or [values]}, bytes as {"b64": ...}."""
    if not isinstance(features, dict):
        raise UserError('each example must be a JSON object of features')
    feature = {}
    for name, value in features.items():
        values = _decode_b64(value if isinstance(value, list) else [value])
        if all(isinstance(item, bytes) for item in values):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        elif all(isinstance(item, int) for item in values):
            feature[name] = _feature(name, tf.train.Int64List, values, 'int64_list')
        elif all(isinstance(item, (int, float)) for item in values):
            feature[name] = _feature(name, tf.train.FloatList, values, 'float_list')
        else:
            raise UserError(f'feature {name}: values must all be bytes ({{"b64": ...}}), ints or floats')
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _feature(name, list_type, values, field):
    """A tf.train.Feature of ints or floats; an int beyond int64 (JSON allows any) is refused."""
    try:
        return tf.train.Feature(**{field: list_type(value=values)})
    except (ValueError, TypeError, OverflowError):
        raise UserError(f'feature {name}: a value out of range for {list_type.__name__}') from None
