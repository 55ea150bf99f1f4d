"""Writing labelled images and clips as TFRecord shards in the schema of docs/data.md.

  image  tf.train.Example: image/encoded (PNG or JPEG bytes), image/class/label (int64),
         image/format ('png' or 'jpeg'), image/height and image/width when known.
  clip   tf.train.SequenceExample: context clip/label/index (int64), feature list
         image/encoded (one encoded frame per step): the MediaPipe MediaSequence keys.

`write_tfrecords` writes PREFIX.tfrecord-00000-of-0000N ... and PREFIX.metadata.json;
`source_to_tfrecords` does so for any Source (bin/make_tfrecords).
"""

import collections.abc
import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from estimator_models.errors import UserError
from input_fns import CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY, LENGTH_KEY
from input_fns.progress import Progress
# The keys the reader knows, so writer and reader cannot drift apart.
from input_fns.sources.tfrecords import BOX_KEYS, CLIP_LABEL_KEY, ENCODED_KEY, METADATA_SUFFIX
from input_fns.sources.tfrecords import IMAGE_LABEL_KEY as LABEL_KEY

FORMAT_KEY = 'image/format'
HEIGHT_KEY = 'image/height'
WIDTH_KEY = 'image/width'

_MAGIC = ((b'\x89PNG\r\n\x1a\n', 'png'), (b'\xff\xd8\xff', 'jpeg'))
# A TFRecord frames each record with a length (8 bytes) and two CRCs (4 bytes each).
_RECORD_OVERHEAD = 16


def image_format(encoded):
    """'png' or 'jpeg' from the first bytes of an encoded image, else None."""
    for magic, name in _MAGIC:
        if encoded.startswith(magic):
            return name
    return None


def image_example(encoded, label, height=None, width=None, boxes=None):
    """One image as a tf.train.Example.

    Args:
      encoded: PNG or JPEG bytes (anything else raises ValueError: re-encode it with
        encode_pixels).
      label: class index.
      height, width: the image's size, stored when given.
      boxes: [R, 4] (ymin, xmin, ymax, xmax) in fractions of the image, stored under the
        TF Object Detection API's image/object/bbox/* keys when given.
    """
    features = {
        ENCODED_KEY: _bytes_feature(encoded),
        LABEL_KEY: _int64_feature(label),
        FORMAT_KEY: _bytes_feature(_checked_format(encoded).encode()),
    }
    if height is not None:
        features[HEIGHT_KEY] = _int64_feature(height)
    if width is not None:
        features[WIDTH_KEY] = _int64_feature(width)
    if boxes is not None:
        edges = np.asarray(boxes, np.float32).reshape(-1, 4).T
        for key, values in zip(BOX_KEYS, edges):
            features[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Example(features=tf.train.Features(feature=features))


def clip_sequence_example(encoded_frames, label):
    """One clip as a tf.train.SequenceExample.

    Args:
      encoded_frames: a non-empty sequence of PNG or JPEG bytes, one per frame in order.
      label: class index.
    """
    if not encoded_frames:
        raise ValueError('a clip needs at least one frame')
    for frame in encoded_frames:
        _checked_format(frame)
    frames = tf.train.FeatureList(feature=[_bytes_feature(frame) for frame in encoded_frames])
    return tf.train.SequenceExample(
        context=tf.train.Features(feature={CLIP_LABEL_KEY: _int64_feature(label)}),
        feature_lists=tf.train.FeatureLists(feature_list={ENCODED_KEY: frames}))


def encode_pixels(pixels):
    """PNG bytes of an image: uint8 (or float 0..255, rounded and clipped) [h, w, c] with
    c in 1, 3, 4, or [h, w] for grayscale."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return tf.io.encode_png(pixels).numpy()


def shard_paths(prefix, shards):
    """The `shards` file names of PREFIX: PREFIX.tfrecord-00000-of-0000N, ..."""
    if shards < 1:
        raise ValueError(f'shards must be at least 1, not {shards}')
    return [f'{prefix}.tfrecord-{index:05d}-of-{shards:05d}' for index in range(shards)]


@dataclasses.dataclass(frozen=True)
class ShardContents:
    """What write_tfrecords' examples are, as its metadata file records them.

    kind: input_fns.IMAGE or input_fns.CLIP.
    class_names: the K class names, in label order.
    frame_shape: (H, W, C) of every image or frame if the caller knows them all to be
      the same, else None; images then also carry image/height and image/width.
    """
    kind: str
    class_names: Sequence[str]
    frame_shape: Optional[tuple] = None


def write_tfrecords(examples, prefix, shards, contents, total=None, progress=True):
    """Writes examples round-robin into `shards` TFRecord files and a metadata file.

    Each shard is written under a hidden temporary name and renamed once all are
    complete, so a reader globbing PREFIX.tfrecord* never sees part of one; the
    metadata file comes last. On any error the temporary files are removed.

    Args:
      examples: iterable of (encoded, label): PNG/JPEG bytes for images, a list of
        them (the frames) for clips; labels in [0, len(class_names)).
      prefix: path prefix of the output files; its folder is created if needed.
      shards: number of shard files.
      contents: the ShardContents: kind, class names and frame shape.
      total: the number of examples for the progress bar (default: len(examples)
        when it has one).
      progress: show the progress on stderr (input_fns.progress).

    Returns:
      {'examples': N, 'classes': K, 'bytes': bytes written in all shards,
       'per_class': {class name: examples}, 'shards': [paths], 'metadata': path}.
      The metadata file holds {'kind', 'class_names', 'num_examples', 'frame_shape'
      (or null), 'shards' (file names, relative to its folder)}.
    """
    kind, class_names, frame_shape = contents.kind, contents.class_names, contents.frame_shape
    if kind not in (IMAGE, CLIP):
        raise ValueError(f'kind must be {IMAGE!r} or {CLIP!r}, not {kind!r}')
    paths = shard_paths(prefix, shards)
    temporaries = [_temporary_path(path) for path in paths]
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    if total is None and isinstance(examples, collections.abc.Sized):
        total = len(examples)
    bar = Progress(total) if progress else None
    try:
        counts, num_bytes = _write_shards(examples, temporaries, kind, len(class_names),
                                          frame_shape, bar)
    except BaseException:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)
        raise
    for temporary, path in zip(temporaries, paths):
        os.replace(temporary, path)
    metadata = {'kind': kind, 'class_names': list(class_names),
                'num_examples': sum(counts), 'frame_shape': _listed(frame_shape),
                'shards': [os.path.basename(path) for path in paths]}
    metadata_path = prefix + METADATA_SUFFIX
    _write_json(metadata, metadata_path)
    return {'examples': sum(counts), 'classes': len(class_names), 'bytes': num_bytes,
            'per_class': dict(zip(class_names, counts)), 'shards': paths,
            'metadata': metadata_path}


def _write_shards(examples, paths, kind, num_classes, frame_shape, bar):
    """Writes the serialized examples round-robin into `paths`; returns (examples per
    class [K], bytes written)."""
    counts = [0] * num_classes
    num_bytes = 0
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    try:
        for position, (encoded, label) in enumerate(examples):
            if not 0 <= label < num_classes:
                raise ValueError(
                    f'example {position} has label {label}, outside [0, {num_classes})')
            record = _serialized(encoded, label, kind, frame_shape)
            writers[position % len(writers)].write(record)
            counts[label] += 1
            num_bytes += len(record) + _RECORD_OVERHEAD
            if bar is not None:
                bar.advance(note=f'{num_bytes / 1e6:.1f} MB')
    finally:
        for writer in writers:
            writer.close()
        # Ends the bar's line even on an error, so that the error starts a line of its own.
        if bar is not None:
            bar.finish()
    return counts, num_bytes


def _serialized(encoded, label, kind, frame_shape):
    if kind == CLIP:
        return clip_sequence_example(encoded, label).SerializeToString()
    height, width = frame_shape[:2] if frame_shape else (None, None)
    return image_example(encoded, label, height, width).SerializeToString()


def _temporary_path(path):
    """A hidden name in the same folder, so that the rename is atomic and a glob of the
    final names does not match it."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f'.{name}.incomplete')


def _write_json(value, path):
    temporary = _temporary_path(path)
    with open(temporary, 'w') as file:
        json.dump(value, file, indent=2)
        file.write('\n')
    os.replace(temporary, path)


def _listed(shape):
    return None if shape is None else [int(size) for size in shape]


def _checked_format(encoded):
    name = image_format(encoded)
    if name is None:
        raise ValueError(f'encoded image is neither PNG nor JPEG (it starts with {encoded[:8]!r})')
    return name


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def source_to_tfrecords(data, prefix, shards, progress=True):
    """Writes every example of a Source as PNG-encoded TFRecord shards; see write_tfrecords.

    Pixels are decoded by the source and encoded again as PNG (lossless), so any source
    (folders of GIFs, .npz arrays, TFDS) gives the same schema. Refuses to write over
    existing shards of PREFIX, which a reader's glob would mix with the new ones.
    """
    existing = tf.io.gfile.glob(prefix + '.tfrecord*')
    if existing:
        raise UserError(f'{existing[0]} already exists; choose another --output or remove '
                        f'the old {prefix}.tfrecord* files')
    info = data.info
    channels = (data.first_frame_shape() or (0, 0, 0))[2]
    class_names = info.class_names or [str(label) for label in range(info.num_classes)]

    def encoded_examples():
        for features, label in data.examples(channels, info.num_classes).as_numpy_iterator():
            if info.kind == CLIP:
                frames = features[FRAMES_KEY][:features[LENGTH_KEY]]
                yield [encode_pixels(frame) for frame in frames], int(label)
            else:
                yield encode_pixels(features[IMAGE_KEY]), int(label)

    contents = ShardContents(info.kind, class_names, info.frame_shape)
    return write_tfrecords(encoded_examples(), prefix, shards, contents, total=info.num_examples,
                           progress=progress)
