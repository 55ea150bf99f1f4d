"""TFDS datasets as streaming sources: one split of a builder already prepared on disk.

Spec body (what follows `tfds:`): `NAME[/CONFIG][:VERSION][:SPLIT]`, e.g. `mnist`,
`ucf101/ucf101_1_256:train`, `mnist:3.0.1:test`, `cifar10:train[:10%]` (any TFDS split
syntax). Without a split: the `train` split, and `test` when the dataset has one.

Nothing here downloads. A dataset that is not prepared under the data dir is an error
that says how to prepare it, unless the caller knows how to make it locally (input_fns.specs
renders the embedded datasets of input_fns.embedded on first use).

Pixels stay encoded through the TFDS reader (`SkipDecoding`) and are decoded in
`decode`, so a bad image fails inside the guard of `Source.examples` and is reported as
a bad record of its file.
"""

import logging
import os
import re

import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import gcs_utils

from estimator_models.errors import UserError
from input_fns import CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY, preprocess
from input_fns.sources import source
from input_fns.sources.tfrecords import decode_frames

# TFDS 4.9.4 asks its public GCS bucket about every dataset it does not find on disk
# (DatasetInfo.initialize_from_bucket, is_dataset_on_gcs): offline that is seconds of
# failed look-ups per builder. This module flag, checked by every GCS helper of
# gcs_utils, is the only switch it has; nothing here wants GCS.
gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access


def _not_tfds_dtype_notice(record):
    """False for TFDS 4.9.4's warnings about its own use of TensorFlow dtypes
    (tfds.features.Video hands Image a tf.uint8: dtype_utils.py:47, feature.py:71), which
    users can do nothing about."""
    message = record.getMessage()
    return not ('in tfds.features This will soon be deprecated' in message
                or '.dtype` is deprecated' in message)


logging.getLogger('absl').addFilter(_not_tfds_dtype_notice)

DATA_DIR_ENV = 'TFDS_DATA_DIR'
# (input feature, label feature) of datasets whose features are not simply
# image-or-video plus label; any other dataset is read by that generic rule.
KNOWN_FEATURES = {
    'mnist': ('image', 'label'),
    'fashion_mnist': ('image', 'label'),
    'kmnist': ('image', 'label'),
    'emnist': ('image', 'label'),
    'cifar10': ('image', 'label'),
    'cifar100': ('image', 'label'),
    'svhn_cropped': ('image', 'label'),
    'ucf101': ('video', 'label'),
}
_GENERIC_INPUTS = ('image', 'video')
_GENERIC_LABEL = 'label'
# A clip dataset's per-frame labels: a Sequence of ClassLabel under this key (moving_glyphs).
FRAME_LABELS_FEATURE = 'frame_labels'
_VERSION = re.compile(r'\d+\.\d+\.\d+')


def default_data_dir():
    """$TFDS_DATA_DIR, else ~/tensorflow_datasets: where TFDS itself looks by default."""
    return os.environ.get(DATA_DIR_ENV) or os.path.join(os.path.expanduser('~'),
                                                        'tensorflow_datasets')


def open_tfds(body, data_dir=None, kind=None, preparers=None):
    """(train TfdsSource, test TfdsSource or None) of a spec body (see the module docstring).

    Args:
      body: the spec after `tfds:`.
      data_dir: where prepared datasets live; default `default_data_dir()`.
      kind: IMAGE or CLIP, what the model reads; None accepts either.
      preparers: {dataset name: function of its builder, not prepared yet, that prepares
        it and returns a builder reading it} for the datasets made locally; any other
        dataset must be prepared under data_dir already.
    """
    name, config, version, split = parse_body(body)
    data_dir = data_dir or default_data_dir()
    builder = _builder(name, config, version, data_dir)
    holds = _kind_and_frame_shape(builder, input_and_label(builder)[0])[0]
    if kind is not None and holds != kind:
        raise UserError(f'dataset {"tfds:" + body!r} holds {holds}s but this model reads {kind}s')
    if not builder.is_prepared():
        if builder.name not in (preparers or {}):
            raise _not_prepared(builder, data_dir)
        builder = preparers[builder.name](builder)
    return sources_of(builder, f'tfds:{name}' + (f'/{config}' if config else ''), split)


def parse_body(body):
    """`NAME[/CONFIG][:VERSION][:SPLIT]` -> (name, config, version, split), None for
    each part left out."""
    dataset, _, rest = body.partition(':')
    name, _, config = dataset.partition('/')
    version, split = None, rest
    head, _, tail = rest.partition(':')
    if _VERSION.fullmatch(head):
        version, split = head, tail
    if not name or '/' in config:
        raise UserError(f'bad TFDS spec tfds:{body}: expected tfds:NAME[/CONFIG][:VERSION][:SPLIT]')
    return name, config or None, version, split or None


def sources_of(builder, spec, split=None):
    """(train, test or None) TfdsSources of a prepared builder: `split` alone, else train
    and, when the dataset has it, test. `spec` (without a split) names them in messages."""
    if split:
        return TfdsSource(builder, split, f'{spec}:{split}'), None
    test = 'test' in builder.info.splits
    return (TfdsSource(builder, 'train', f'{spec}:train'),
            TfdsSource(builder, 'test', f'{spec}:test') if test else None)


class TfdsSource(source.Source):
    """One split of a prepared TFDS builder; records are (file, index in file, (encoded, label)).

    The payload is (string [] encoded image, or string [T] encoded frames; int64 [] label).
    """

    def __init__(self, builder, split, spec):
        self.builder = builder
        self.split = split
        self.input_key, self.label_key = input_and_label(builder)
        kind, frame_shape = _kind_and_frame_shape(builder, self.input_key)
        label = builder.info.features[self.label_key]
        split_info = _split_info(builder, split, spec)
        if builder.info.file_format != tfds.core.file_adapters.FileFormat.TFRECORD:
            raise UserError(f'{spec}: its files are {builder.info.file_format.value}; only '
                            'TFRecord-prepared TFDS datasets are read here')
        self._file_instructions = [
            (os.fspath(instruction.filename), instruction.skip, instruction.take)
            for instruction in split_info.file_instructions]
        self._parser = tfds.core.example_parser.ExampleParser(
            builder.info.features.get_serialized_info())
        self._frame_labels_key = FRAME_LABELS_FEATURE if kind == CLIP and _has_frame_labels(builder) else None
        self.info = source.SourceInfo(
            spec=spec, kind=kind, frame_shape=frame_shape, num_classes=label.num_classes,
            class_names=tuple(label.names), num_examples=split_info.num_examples,
            num_frame_classes=_frame_classes(builder) if self._frame_labels_key else 0)
        self._first_frame_shape = frame_shape

    def first_frame_shape(self):
        """(H, W, C) of every image when the dataset declares it, else of the first image
        (or first frame of the first clip), read once."""
        if self._first_frame_shape is None:
            origin, index, payload = next(iter(self.records(source.Shard(), None)))
            try:
                features, _ = self.decode(payload, channels=None)
            except tf.errors.OpError:
                raise UserError(f'{self.info.spec}: record {index} of {origin.numpy().decode()} '
                                'does not decode') from None
            pixels = features[FRAMES_KEY][0] if self.info.kind == CLIP else features[IMAGE_KEY]
            self._first_frame_shape = tuple(int(size) for size in pixels.shape)
        return self._first_frame_shape

    def records(self, shard, shuffle_seed):
        """(file, index in the file, serialized example) of this shard, read from the
        split's files as TFDS lays them out (file instructions: which records of which
        file belong to the split or slice). Reading them here rather than through
        `as_dataset` saves TFDS's own per-example map calls: parsing happens in `decode`,
        in the one call per example the guard makes anyway."""
        instructions = source.shard_files(self._file_instructions, shard)
        paths, skips, takes = zip(*instructions)
        columns = (list(paths), tf.constant(skips, tf.int64), tf.constant(takes, tf.int64))
        records = source.interleaved_files(columns, _instruction_records, shuffle_seed)
        return source.shard_records(records, len(self._file_instructions), shard)

    def shard_description(self, shard):
        return source.describe_shard([path for path, _, _ in self._file_instructions], shard)

    def decode(self, payload, channels, max_image_pixels=preprocess.DEFAULT_MAX_IMAGE_PIXELS):
        """A serialized TFDS example -> ({IMAGE_KEY: uint8 [h, w, channels]} or
        {FRAMES_KEY: uint8 [T, h, w, channels], LENGTH_KEY: T}, label int64 []); fails on a
        record that does not parse, bytes that are no image, an image whose header claims
        more than `max_image_pixels` pixels, frames of different sizes, and a clip of no
        frames. TFDS's own parser reads the example; the pixels stay
        encoded until decoded here."""
        parsed = self._parser.parse_example(payload)
        encoded, label = parsed[self.input_key], parsed[self.label_key]
        if self.info.kind == CLIP:
            frame_labels = parsed[self._frame_labels_key] if self._frame_labels_key else None
            frames = decode_frames(encoded, channels, max_image_pixels)
            return source.clip_features(frames, frame_labels=frame_labels), label
        image = preprocess.checked_decode_image(encoded, channels, max_image_pixels)
        return source.image_features(image), label


def _has_frame_labels(builder):
    """Whether the builder labels every frame: a `frame_labels` sequence of class labels."""
    features = builder.info.features
    feature = features[FRAME_LABELS_FEATURE] if FRAME_LABELS_FEATURE in features.keys() else None
    return (isinstance(feature, tfds.features.Sequence)
            and isinstance(feature.feature, tfds.features.ClassLabel))


def _frame_classes(builder):
    return builder.info.features[FRAME_LABELS_FEATURE].feature.num_classes


def _instruction_records(path, skip, take):
    """The records of one TFDS file instruction: (path, (index in the file, record)).
    Skipped after numbering, so the index stays the position in the whole file."""
    return source.in_file(path, tf.data.TFRecordDataset(path)).skip(skip).take(take)  # take -1: all


def input_and_label(builder):
    """(input feature key, label feature key) of a builder: an image or video, and a
    ClassLabel; else a UserError naming the features it has."""
    features = builder.info.features
    if builder.name in KNOWN_FEATURES:
        input_key, label_key = KNOWN_FEATURES[builder.name]
    else:
        input_key = next((key for key in _GENERIC_INPUTS if key in features), None)
        label_key = _GENERIC_LABEL
    if (input_key not in features or _kind_and_frame_shape(builder, input_key)[0] is None
            or label_key not in features
            or not isinstance(features[label_key], tfds.features.ClassLabel)):
        described = ', '.join(f'{key} ({type(feature).__name__})'
                              for key, feature in features.items())
        raise UserError(f'TFDS dataset {builder.name} has no image or video with a class label '
                        f'named {label_key!r} to learn from; its features: {described}')
    return input_key, label_key


def _kind_and_frame_shape(builder, input_key):
    """IMAGE or CLIP (None if the feature is neither), and (H, W, C) of every image or
    frame (None if any is unknown)."""
    feature = builder.info.features[input_key]
    if isinstance(feature, tfds.features.Sequence):  # tfds.features.Video is one
        kind, feature = CLIP, feature.feature
    else:
        kind = IMAGE
    if not isinstance(feature, tfds.features.Image):
        return None, None
    shape = tuple(feature.shape)
    return kind, None if None in shape else shape


def _split_info(builder, split, spec):
    try:
        return builder.info.splits[split]
    except (KeyError, ValueError, AssertionError):
        splits = ', '.join(builder.info.splits)
        raise UserError(f'{spec}: no split {split!r} (splits: {splits}; slices like '
                        'train[:10%] work)') from None


def _builder(name, config, version, data_dir):
    """The builder of a dataset in `data_dir`, prepared or not; UserError if TFDS knows no
    such dataset, config or version."""
    try:
        return tfds.builder(name, config=config, version=version, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(f'unknown TFDS dataset {name!r} (not in tensorflow-datasets '
                        f'{tfds.__version__} nor prepared under {data_dir})') from None
    except (ValueError, AssertionError) as error:  # no such config or version
        raise UserError(f'TFDS dataset {name}: {_tfds_reason(error)}') from None


def _not_prepared(builder, data_dir):
    config = f' --config={builder.builder_config.name}' if builder.builder_config else ''
    return UserError(
        f'TFDS dataset {builder.info.full_name} is not prepared under {data_dir} and nothing is '
        f'downloaded here: run `tfds build {builder.name}{config} --data_dir=DIR` on a machine '
        f'with internet access, then copy DIR/{builder.name} to {data_dir}/{builder.name}')


def _tfds_reason(error):
    """The first line of a TFDS error, without the builder kwargs it repeats
    (`Failed to construct dataset "mnist", builder_kwargs "{...}": REASON`)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r'^Failed to construct dataset .*?": ', '', line)
