"""Client side of an export: load a SavedModel, read input files, answer like TF Serving."""

import os

import numpy as np
import tensorflow as tf

from input_fns import CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY, arrays, preprocess
from input_fns.errors import UserError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')


def resolve_version(path):
    """A SavedModel directory: `path` itself, or its highest integer version (TF Serving's rule)."""
    if os.path.exists(os.path.join(path, 'saved_model.pb')):
        return path
    if not os.path.isdir(path):
        raise UserError(f'no SavedModel at {path}')
    versions = [name for name in os.listdir(path)
                if name.isdigit() and os.path.exists(os.path.join(path, name, 'saved_model.pb'))]
    if not versions:
        raise UserError(f'no SavedModel at {path}: neither saved_model.pb nor integer version directories')
    return os.path.join(path, max(versions, key=int))


def load_signature(path, name='serving_default'):
    """(the loaded object, its signature `name`); keep the object alive while calling."""
    loaded = tf.saved_model.load(resolve_version(path))
    if name not in loaded.signatures:
        raise UserError(f'the SavedModel has no signature {name!r}; it has {", ".join(loaded.signatures)}')
    return loaded, loaded.signatures[name]


def read_inputs(paths, kind, frame_shape):
    """Pixels of every input file, fitted to `frame_shape` (H, W, C): float32 [N, ...].

    Files: `.npz` (its `x` or `x_test` array), images (PNG, JPEG, BMP, GIF), and, for
    clips, directories of frame images (in name order) — every clip must have the same
    number of frames.
    """
    batches = [_read_one(path, kind) for path in paths]
    height, width, channels = frame_shape
    fitted = []
    for batch in batches:
        batch = tf.constant(batch)
        fit = preprocess.fit_frames if kind == CLIP else preprocess.fit_images
        fitted.append(fit(batch, height, width, channels, 'resize').numpy())
    try:
        return np.concatenate(fitted)
    except ValueError:
        raise UserError('all clips in one request must have the same number of frames') from None


def _read_one(path, kind):
    if path.endswith('.npz'):
        if not os.path.isfile(path):
            raise UserError(f'no such file: {path}')
        with np.load(path) as contents:
            key = 'x' if 'x' in contents.files else 'x_test'
            if key not in contents.files:
                raise UserError(f'{path}: no array x or x_test')
            return arrays.with_channel_axis(contents[key], kind).astype(np.float32)
    if kind == CLIP:
        if not os.path.isdir(path):
            raise UserError(f'a clip is a directory of frame images or a .npz, not {path}')
        frames = sorted(name for name in os.listdir(path) if name.lower().endswith(IMAGE_SUFFIXES))
        if not frames:
            raise UserError(f'no frame images in {path}')
        return np.stack([_decode(os.path.join(path, name)) for name in frames])[np.newaxis]
    return _decode(path)[np.newaxis]


def _decode(path):
    if not os.path.isfile(path):
        raise UserError(f'no such file: {path}')
    try:
        return tf.io.decode_image(tf.io.read_file(path), expand_animations=False).numpy().astype(np.float32)
    except tf.errors.InvalidArgumentError:
        raise UserError(f'cannot decode {path} as an image') from None


def input_name(kind):
    return FRAMES_KEY if kind == CLIP else IMAGE_KEY


def signature_kind_and_shape(signature):
    """(IMAGE or CLIP, (H, W, C)) from the raw-pixel signature's input."""
    specs = signature.structured_input_signature[1]
    if FRAMES_KEY in specs:
        return CLIP, tuple(specs[FRAMES_KEY].shape[2:])
    if IMAGE_KEY in specs:
        return IMAGE, tuple(specs[IMAGE_KEY].shape[1:])
    raise UserError(f'the signature takes {", ".join(specs)}, not raw pixels')


def rest_predictions(outputs):
    """TF Serving's row-format response body: {"predictions": [{output: value}, ...]}."""
    names = sorted(outputs)
    columns = {name: outputs[name].numpy().tolist() for name in names}
    return {'predictions': [{name: columns[name][row] for name in names}
                            for row in range(len(columns[names[0]]))]}
