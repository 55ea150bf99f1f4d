"""Labelled arrays held in memory, as a Source: for predictions over a few examples and
for tests. Data sets of any size come from files (input_fns.specs); these arrays become
constants of the graph that reads them."""

import dataclasses
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from estimator_models.errors import UserError
from input_fns import CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY, LENGTH_KEY
from input_fns.sources import source


@dataclasses.dataclass(frozen=True)
class LabelledArrays(source.Source):
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

    @property
    def info(self):
        return source.SourceInfo(spec='arrays', kind=self.kind, frame_shape=self.frame_shape,
                                 num_classes=self.num_classes, class_names=self.class_names,
                                 num_examples=len(self))

    def records(self, shard, shuffle_seed):
        del shuffle_seed
        lengths = self.lengths if self.lengths is not None else np.ones(len(self), np.int32)
        rows = tf.data.Dataset.from_tensor_slices((self.inputs, self.labels, lengths))
        return source.shard_records(source.flattened(source.in_file('arrays', rows)), 1, shard)

    def decode(self, payload, channels, max_image_pixels=None):
        del channels, max_image_pixels  # Raw pixels: nothing to decode.
        pixels, label, length = payload
        if self.kind == CLIP:
            return source.clip_features(pixels[:length], length), label
        return source.image_features(pixels), label

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


def read_all(data, num_examples=None):
    """The first `num_examples` (default: all) examples of a Source, in order, in memory.

    Images must share one size; clips are padded to the longest. For tests and small
    prediction inputs: it reads everything it is asked for.
    """
    channels = (data.first_frame_shape() or (0, 0, 0))[2]
    examples = data.examples(channels, data.info.num_classes)
    if num_examples:
        examples = examples.take(num_examples)
    pixels, labels, lengths = [], [], []
    for features, label in examples.as_numpy_iterator():
        if data.info.kind == CLIP:
            pixels.append(features[FRAMES_KEY])
            lengths.append(features[LENGTH_KEY])
        else:
            pixels.append(features[IMAGE_KEY])
        labels.append(label)
    if data.info.kind == CLIP:
        longest = max(lengths)
        pixels = [np.pad(clip, [(0, longest - len(clip))] + [(0, 0)] * 3) for clip in pixels]
    return validated(np.stack(pixels), np.array(labels), data.info.kind,
                     lengths if data.info.kind == CLIP else None, data.info.class_names,
                     source=data.info.spec)
