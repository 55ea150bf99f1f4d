"""In-memory labelled arrays: the form the embedded datasets and `.npz` files take."""

import dataclasses
import os
from typing import Optional, Tuple

import numpy as np

from input_fns import CLIP, IMAGE
from input_fns.errors import UserError


@dataclasses.dataclass(frozen=True)
class LabelledArrays:
    """Examples held in memory.

    Attributes:
      inputs: uint8 or float [N, H, W, C] images, or [N, T, H, W, C] clips whose
        frames past `lengths[i]` are padding.
      labels: int64 [N] class indices.
      lengths: int32 [N] true clip lengths, or None for images.
      class_names: one name per class, or None when the source has none.
    """
    inputs: np.ndarray
    labels: np.ndarray
    lengths: Optional[np.ndarray] = None
    class_names: Optional[Tuple[str, ...]] = None

    @property
    def kind(self):
        return CLIP if self.inputs.ndim == 5 else IMAGE

    @property
    def frame_shape(self):
        """(H, W, C) of one image or one frame."""
        return tuple(int(d) for d in self.inputs.shape[-3:])

    @property
    def num_classes(self):
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self):
        return len(self.labels)

    def take(self, indices):
        """The examples at `indices`, in that order."""
        return LabelledArrays(
            self.inputs[indices], self.labels[indices],
            None if self.lengths is None else self.lengths[indices], self.class_names)


def with_channel_axis(inputs, kind):
    """Adds a channel axis to grayscale arrays: [N,H,W] -> [N,H,W,1], [N,T,H,W] -> [N,T,H,W,1]."""
    image_rank = {IMAGE: 4, CLIP: 5}[kind]
    if inputs.ndim == image_rank - 1:
        return inputs[..., np.newaxis]
    if inputs.ndim != image_rank:
        expected = '(N,H,W[,C])' if kind == IMAGE else '(N,T,H,W[,C])'
        raise UserError(f'expected {kind} arrays shaped {expected}, got shape {inputs.shape}')
    return inputs


def validated(inputs, labels, kind, lengths=None, class_names=None, source='arrays'):
    """Checks shapes, dtypes and value ranges and returns LabelledArrays."""
    inputs = with_channel_axis(np.asarray(inputs), kind)
    labels = np.asarray(labels)
    if inputs.dtype != np.uint8 and not np.issubdtype(inputs.dtype, np.floating):
        raise UserError(f'{source}: pixels must be uint8 or float, got {inputs.dtype}')
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f'{source}: labels must be integers shaped (N,), got {labels.dtype} {labels.shape}')
    if len(labels) != len(inputs):
        raise UserError(f'{source}: {len(inputs)} inputs but {len(labels)} labels')
    if len(labels) == 0:
        raise UserError(f'{source}: no examples')
    if labels.min() < 0:
        raise UserError(f'{source}: negative label {labels.min()}')
    if inputs.shape[-1] not in (1, 3):
        raise UserError(f'{source}: images must have 1 or 3 channels, got {inputs.shape[-1]}')
    if kind == CLIP:
        lengths = _validated_lengths(lengths, inputs, source)
    return LabelledArrays(inputs, labels.astype(np.int64), lengths,
                          tuple(class_names) if class_names is not None else None)


def _validated_lengths(lengths, clips, source):
    max_frames = clips.shape[1]
    if lengths is None:
        return np.full(len(clips), max_frames, np.int32)
    lengths = np.asarray(lengths)
    if lengths.shape != (len(clips),):
        raise UserError(f'{source}: lengths must be shaped ({len(clips)},), got {lengths.shape}')
    if lengths.min() < 1 or lengths.max() > max_frames:
        raise UserError(f'{source}: clip lengths must lie in 1..{max_frames}')
    return lengths.astype(np.int32)


def load_npz(path, kind):
    """Reads a `.npz` of arrays into (train, test) LabelledArrays; test is None if absent.

    Accepted keys: `x`, `y` (one split), or `x_train`, `y_train`, `x_test`, `y_test`
    (the layout of Keras' `mnist.npz`); optional `lengths` / `lengths_train` /
    `lengths_test` for clips and `class_names`.
    """
    if not os.path.isfile(path):
        raise UserError(f'no such .npz file: {path}')
    try:
        with np.load(path, allow_pickle=False) as arrays:
            contents = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as error:
        raise UserError(f'cannot read {path} as .npz: {error}') from None
    class_names = contents.get('class_names')
    if class_names is not None:
        class_names = [str(name) for name in class_names]

    def split(suffix):
        x_key, y_key = 'x' + suffix, 'y' + suffix
        if x_key not in contents:
            return None
        if y_key not in contents:
            raise UserError(f'{path}: has {x_key} but no {y_key}')
        return validated(contents[x_key], contents[y_key], kind, contents.get('lengths' + suffix),
                         class_names, source=path)

    if 'x' in contents:
        return split(''), None
    if 'x_train' in contents or 'x_test' in contents:
        return split('_train'), split('_test')
    raise UserError(f'{path}: expected arrays x and y (or x_train, y_train, x_test, y_test), '
                    f'found {sorted(contents)}')
