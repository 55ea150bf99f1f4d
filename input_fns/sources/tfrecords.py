"""TFRecord shards in the schema of docs/data.md, read as a stream.

  image  tf.train.Example:          image/encoded (PNG/JPEG/GIF/BMP bytes), image/class/label (int64),
                                    optional boxes image/object/bbox/{ymin,xmin,ymax,xmax} (floats)
  clip   tf.train.SequenceExample:  context clip/label/index (int64),
                                    feature list image/encoded (one encoded frame per step),
                                    optional feature list clip/frame_labels (int64, one per frame)

Files are matched by glob (any file system TensorFlow has: local, gs://, ...), read in
parallel with an interleave whose order the seed fixes, and decoded in the graph.
Files ending in `.gz` are read as GZIP.

The class names, example count and frame shape come from `PREFIX.metadata.json` beside
the shards when bin/make_tfrecords wrote them (PREFIX: the spec up to `.tfrecord`);
otherwise from a peek at the first records: the first one's kind and frame shape, and
the largest label of the first PEEKED_RECORDS. Images have boxes, and clips frame labels,
when the first record does.
"""

import json
import re

import numpy as np
import tensorflow as tf

from estimator_models.errors import UserError
from input_fns import CLIP, IMAGE, preprocess
from input_fns.sources import source

ENCODED_KEY = 'image/encoded'
IMAGE_LABEL_KEY = 'image/class/label'
CLIP_LABEL_KEY = 'clip/label/index'
CLIP_FRAME_LABELS_KEY = 'clip/frame_labels'
BOX_KEYS = tuple(f'image/object/bbox/{edge}' for edge in ('ymin', 'xmin', 'ymax', 'xmax'))
METADATA_SUFFIX = '.metadata.json'
PEEKED_RECORDS = 1000


def is_tfrecord_spec(spec):
    return '.tfrecord' in spec


def open_tfrecords(pattern, kind=None):
    """(TFRecordSource, None): TFRecord files have no test split of their own."""
    files = sorted(tf.io.gfile.glob(pattern))
    files = [path for path in files if not path.endswith(METADATA_SUFFIX)]
    if not files:
        raise UserError(f'no TFRecord files match {pattern}')
    metadata = _read_metadata(pattern)
    info = _info_from_metadata(pattern, metadata) if metadata else _peeked_info(pattern, files)
    if kind is not None and info.kind != kind:
        raise UserError(f'{pattern} holds {info.kind}s but this model reads {kind}s')
    return TFRecordSource(files, info), None


class TFRecordSource(source.Source):
    """Examples or SequenceExamples from TFRecord files."""

    def __init__(self, files, info):
        self.files = list(files)
        self.info = info

    def records(self, shard, shuffle_seed):
        files = source.shard_files(self.files, shard)
        records = source.interleaved_files(files, _file_records, shuffle_seed)
        return source.shard_records(records, len(self.files), shard)

    def shard_description(self, shard):
        return source.describe_shard(self.files, shard)

    def decode(self, payload, channels, max_image_pixels=preprocess.DEFAULT_MAX_IMAGE_PIXELS):
        """A serialized record -> image uint8 [h, w, channels] or clip frames uint8
        [T, h, w, channels], and its label; fails (a bad record) on an encoded image
        whose header claims more than `max_image_pixels` pixels, before decoding it."""
        if self.info.kind == CLIP:
            return _decode_clip(payload, channels, max_image_pixels, self.info.num_frame_classes > 0)
        return _decode_image(payload, channels, max_image_pixels, self.info.has_boxes)


def _file_records(path):
    compression = tf.where(tf.strings.regex_full_match(path, r'.*\.gz'), 'GZIP', '')
    return source.in_file(path, tf.data.TFRecordDataset(path, compression_type=compression))


def _decode_image(serialized, channels, max_image_pixels, with_boxes=False):
    features = {
        ENCODED_KEY: tf.io.FixedLenFeature([], tf.string),
        IMAGE_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    }
    if with_boxes:
        features.update({key: tf.io.VarLenFeature(tf.float32) for key in BOX_KEYS})
    parsed = tf.io.parse_single_example(serialized, features)
    image = preprocess.checked_decode_image(parsed[ENCODED_KEY], channels, max_image_pixels)
    boxes = None
    if with_boxes:
        boxes = tf.stack([tf.sparse.to_dense(parsed[key]) for key in BOX_KEYS], axis=1)  # [R, 4]
    return source.image_features(image, boxes), parsed[IMAGE_LABEL_KEY]


def _decode_clip(serialized, channels, max_image_pixels, with_frame_labels=False):
    sequence_features = {ENCODED_KEY: tf.io.FixedLenSequenceFeature([], tf.string)}
    if with_frame_labels:
        sequence_features[CLIP_FRAME_LABELS_KEY] = tf.io.FixedLenSequenceFeature([], tf.int64)
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={CLIP_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)},
        sequence_features=sequence_features)
    frames = decode_frames(sequence[ENCODED_KEY], channels, max_image_pixels)
    frame_labels = sequence.get(CLIP_FRAME_LABELS_KEY)
    return source.clip_features(frames, frame_labels=frame_labels), context[CLIP_LABEL_KEY]


def decode_frames(encoded_frames, channels, max_image_pixels=preprocess.DEFAULT_MAX_IMAGE_PIXELS):
    """string [T] of encoded frames -> uint8 [T, h, w, channels]; fails if T is 0, the
    frames differ in size, or one claims more than `max_image_pixels` pixels."""
    tf.debugging.assert_positive(tf.size(encoded_frames), message='clip without frames')
    return tf.map_fn(
        lambda encoded: preprocess.checked_decode_image(encoded, channels, max_image_pixels),
        encoded_frames, fn_output_signature=tf.TensorSpec([None, None, channels or None], tf.uint8))


def _read_metadata(pattern):
    candidates = tf.io.gfile.glob(pattern.split('.tfrecord')[0] + METADATA_SUFFIX)
    if len(candidates) != 1:
        return None
    try:
        with tf.io.gfile.GFile(candidates[0]) as stream:
            return json.load(stream)
    except (ValueError, tf.errors.OpError) as error:
        raise UserError(f'cannot read {candidates[0]}: {error}') from None


def _info_from_metadata(pattern, metadata):
    try:
        shape = metadata.get('frame_shape')
        return source.SourceInfo(
            spec=pattern, kind=metadata['kind'], frame_shape=tuple(shape) if shape else None,
            num_classes=len(metadata['class_names']), class_names=tuple(metadata['class_names']),
            num_examples=metadata.get('num_examples'), has_boxes=bool(metadata.get('has_boxes')),
            num_frame_classes=int(metadata.get('num_frame_classes', 0)))
    except (KeyError, TypeError) as error:
        raise UserError(f'{pattern}: its {METADATA_SUFFIX} lacks {error}') from None


def _peeked_info(pattern, files):
    """Kind and frame shape of the first record, classes from the labels of the first few."""
    first_records = []
    for path in files:
        first_records += _first_records(path, PEEKED_RECORDS - len(first_records))
        if len(first_records) >= PEEKED_RECORDS:
            break
    if not first_records:
        raise UserError(f'{pattern}: the files hold no records')
    parsed = [example for example in map(_parsed, first_records) if example is not None]
    if not parsed:
        raise UserError(f'{files[0]}: its records are neither tf.train.Example nor '
                        'tf.train.SequenceExample')
    kind = _record_kind(parsed[0], files[0])
    label_key = CLIP_LABEL_KEY if kind == CLIP else IMAGE_LABEL_KEY
    labels = [label for example in parsed for label in example.context.feature[label_key].int64_list.value]
    if not labels:
        raise UserError(f'{pattern}: the first records have no {label_key} label')
    has_boxes = kind == IMAGE and BOX_KEYS[0] in parsed[0].context.feature
    return source.SourceInfo(spec=pattern, kind=kind, frame_shape=_first_frame_shape(parsed, kind),
                             num_classes=int(np.max(labels)) + 1, has_boxes=has_boxes,
                             num_frame_classes=_peeked_frame_classes(parsed, kind))


def _peeked_frame_classes(parsed, kind):
    """1 + the largest frame label of the first records, when the first clip has them; else 0."""
    if kind != CLIP or CLIP_FRAME_LABELS_KEY not in parsed[0].feature_lists.feature_list:
        return 0
    labels = [label for example in parsed
              for frame in example.feature_lists.feature_list[CLIP_FRAME_LABELS_KEY].feature
              for label in frame.int64_list.value]
    return int(max(labels, default=0)) + 1


def _first_frame_shape(parsed, kind):
    """(H, W, C) of the first image that decodes, or None."""
    for example in parsed:
        if kind == CLIP:
            encoded = example.feature_lists.feature_list[ENCODED_KEY].feature
            encoded = encoded[0].bytes_list.value[:1] if encoded else []
        else:
            encoded = example.context.feature[ENCODED_KEY].bytes_list.value[:1]
        try:
            return tuple(int(size) for size in preprocess.checked_decode_image(encoded[0]).shape)
        except (IndexError, tf.errors.OpError):
            continue  # A bad record: the pipeline names it when it reaches it.
    return None


def _first_records(path, count):
    try:
        dataset = tf.data.TFRecordDataset(path, compression_type='GZIP' if path.endswith('.gz') else '')
        return [record.numpy() for record in dataset.take(count)]
    except tf.errors.OpError as error:
        # The message starts with the graph function that failed, which says nothing to users.
        reason = re.sub(r'^\{\{function_node [^}]*\}\}\s*', '', error.message.strip()).splitlines()[0]
        raise UserError(f'cannot read {path} as TFRecord: {reason}') from None


def _parsed(serialized):
    """A serialized Example parses as a SequenceExample too (its features become the
    context), so one parser serves both kinds; None for a record that does not parse (the
    pipeline names it when it gets there)."""
    try:
        return tf.train.SequenceExample.FromString(serialized)
    except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError has no stable home)
        return None


def _record_kind(parsed, path):
    """Only a clip has the frames feature list."""
    if ENCODED_KEY in parsed.feature_lists.feature_list:
        return CLIP
    if ENCODED_KEY in parsed.context.feature:
        return IMAGE
    raise UserError(f'{path}: records have no {ENCODED_KEY} feature (see docs/data.md for the schema)')
