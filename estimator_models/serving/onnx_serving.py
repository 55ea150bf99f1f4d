"""An exported ONNX file answering as the SavedModel does, in onnxruntime.

`load` gives an object with the `signatures` of a loaded SavedModel (those taking raw
pixels), so estimator_models.serving.predicting reads input files and answers REST
request bodies for it exactly as for the SavedModel:

  images  serving_default       image (and boxes, num_boxes where the model reads boxes)
  clips   serving_default       frames; every clip as long as the batch's T
          predict_with_lengths  frames, lengths

The checks the SavedModel makes in its graph (finite pixels, lengths in 1..T, box counts
in 0..R) are made here before onnxruntime runs, with the same messages.
"""

import os

import numpy as np
import tensorflow as tf

from estimator_models.errors import UserError
from estimator_models.serving import predicting, receivers
from input_fns import BOXES_KEY, FRAMES_KEY, IMAGE_KEY, NUM_BOXES_KEY

MODEL_FILE = 'model.onnx'
_ONNX_DTYPES = {'tensor(float)': tf.float32, 'tensor(int32)': tf.int32, 'tensor(int64)': tf.int64}


def model_file(path):
    """The ONNX file that `path` names: the file itself, or the model.onnx of a version
    directory or of the highest version of a base directory (as a SavedModel's are found)."""
    if os.path.isfile(path):
        return path
    return os.path.join(predicting.resolve_version(path, MODEL_FILE, 'ONNX model'), MODEL_FILE)


def session(path):
    """An onnxruntime InferenceSession, on the CPU, of the ONNX file that `path` names (model_file)."""
    import onnxruntime  # imported here: only ONNX commands need it
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model_file(path), options, providers=['CPUExecutionProvider'])


def run_onnx(inference_session, feeds):
    """{output name: numpy array} of one onnxruntime call."""
    names = [output.name for output in inference_session.get_outputs()]
    return dict(zip(names, inference_session.run(names, feeds)))


def load(path):
    """The ONNX file that `path` names (model_file) as a SavedModel-like object with
    `signatures`; a UserError of one line when it is missing, not ONNX, or not an export
    of this project."""
    path = model_file(path)
    try:
        inference_session = session(path)
    except Exception as error:  # onnxruntime raises its own classes for unreadable models
        raise UserError(f'cannot load {path} as an ONNX model: {first_line(error)}') from None
    specs = {item.name: tf.TensorSpec([None if isinstance(size, str) or size is None else size
                                       for size in item.shape], _ONNX_DTYPES.get(item.type, tf.string), item.name)
             for item in inference_session.get_inputs()}
    if IMAGE_KEY not in specs and FRAMES_KEY not in specs:
        raise UserError(f'{path} takes {", ".join(sorted(specs))}, not image or frames: '
                        'not an ONNX export of this project')
    return OnnxModel(inference_session, specs, path)


class OnnxModel:
    """What predicting needs of a loaded SavedModel: `signatures` {key: callable}, and
    `described` (where it was loaded from) for messages."""

    def __init__(self, inference_session, specs, path):
        self.described = f'the ONNX model at {path}'
        self.signatures = {'serving_default': OnnxSignature(inference_session, specs)}
        if FRAMES_KEY in specs:
            self.signatures = {
                'serving_default': OnnxSignature(inference_session, specs, lengths_from_frames=True),
                receivers.LENGTHS_SIGNATURE: OnnxSignature(inference_session, specs),
            }


class OnnxSignature:
    """One signature: called with tensors by input name, it answers {output: tensor}."""

    def __init__(self, inference_session, specs, lengths_from_frames=False):
        self._session = inference_session
        self._lengths_from_frames = lengths_from_frames
        shown = {name: spec for name, spec in specs.items()
                 if not (lengths_from_frames and name == receivers.LENGTHS_KEY)}
        self.structured_input_signature = ((), shown)

    def __call__(self, **tensors):
        feeds = {name: tensor.numpy() for name, tensor in tensors.items()}
        if self._lengths_from_frames:
            frames = feeds[FRAMES_KEY]
            feeds[receivers.LENGTHS_KEY] = np.full(frames.shape[:1], frames.shape[1], np.int32)
        checked_inputs(feeds)
        try:
            outputs = run_onnx(self._session, feeds)
        except Exception as error:  # onnxruntime's own error classes
            raise ValueError(first_line(error)) from None
        return {name: tf.constant(value) for name, value in outputs.items()}


def first_line(error):
    """The first line of an exception's message (onnxruntime and tf2onnx write several),
    or its class name when it has none."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def checked_inputs(feeds):
    """Raises ValueError, with the SavedModel's message, for inputs its graph refuses."""
    for name in (IMAGE_KEY, FRAMES_KEY):
        if name in feeds and not np.all(np.isfinite(feeds[name])):
            raise ValueError(f'{name}: NaN or infinite pixel values (expected raw pixels 0..255)')
    if FRAMES_KEY in feeds:
        frames, lengths = feeds[FRAMES_KEY], feeds[receivers.LENGTHS_KEY]
        if lengths.size != frames.shape[0]:
            raise ValueError(f'{receivers.LENGTHS_KEY}: {lengths.size} lengths for {frames.shape[0]} clips')
        if np.any(lengths < 1):
            raise ValueError(f'{receivers.LENGTHS_KEY}: an empty clip (a length below 1) in {lengths.tolist()}')
        if np.any(lengths > frames.shape[1]):
            raise ValueError(f'{receivers.LENGTHS_KEY}: a length beyond the {frames.shape[1]} frames '
                             f'given in {lengths.tolist()}')
    if BOXES_KEY in feeds:
        boxes, counts, images = feeds[BOXES_KEY], feeds[NUM_BOXES_KEY], feeds[IMAGE_KEY]
        if counts.size != images.shape[0]:
            raise ValueError(f'{NUM_BOXES_KEY}: {counts.size} counts for {images.shape[0]} images')
        if boxes.shape[0] != images.shape[0]:
            raise ValueError(f'{BOXES_KEY}: boxes for {boxes.shape[0]} images, not {images.shape[0]}')
        if np.any((counts < 0) | (counts > boxes.shape[1])):
            raise ValueError(f'{NUM_BOXES_KEY}: a count outside 0..{boxes.shape[1]} (the boxes given) '
                             f'in {counts.tolist()}')
