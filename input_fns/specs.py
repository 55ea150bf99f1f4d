"""Data specs (`--data`, `--eval_data`) to sources: one string, the same for every model.

  (omitted)                     the model's embedded dataset
  NAME                          an embedded dataset (input_fns.embedded), a TFDS builder
  tfds:NAME[/CONFIG][:SPLIT]    a TFDS dataset prepared under the data dir
  PATTERN.tfrecord*             TFRecord shards (glob; also gs:// and other TF file systems)
  FILE.npz                      arrays x, y (one split) or x_train, y_train, x_test, y_test
  DIR/                          class folders: DIR/<class>/<image> or DIR/<class>/<clip>/<frame>

Without --eval_data, a source with no test split of its own is split here: each record
goes to evaluation when a hash of its file's name and its index in that file falls in
the held-out tenth, so the split is fixed, needs no pass over the data, and is the same
on every worker.
"""

import dataclasses
import os

import tensorflow as tf

from estimator_models.errors import UserError
from input_fns import embedded
from input_fns.sources import folders, npz, source, tfds_source, tfrecords

HOLDOUT_BUCKETS = 10  # one bucket of ten is held out for evaluation
TFDS_PREFIX = 'tfds:'
# `tfds:glyph_digits` is rendered on first use as `glyph_digits` is: importing
# input_fns.embedded registered its builders with TFDS.
_TFDS_PREPARERS = dict.fromkeys(embedded.EMBEDDED, embedded.prepare)


def open_splits(spec, kind=None, data_dir=None):
    """(train Source, test Source or None) of a spec; `kind` (IMAGE, CLIP or None for
    whatever the data holds) must match what the source holds."""
    data_dir = data_dir or tfds_source.default_data_dir()
    if spec in embedded.EMBEDDED_KINDS:
        _check_kind(spec, embedded.EMBEDDED_KINDS[spec], kind)
        return embedded.open_embedded(spec, data_dir)
    if spec.startswith(TFDS_PREFIX):
        return tfds_source.open_tfds(spec[len(TFDS_PREFIX):], data_dir, kind, _TFDS_PREPARERS)
    if tfrecords.is_tfrecord_spec(spec):
        return tfrecords.open_tfrecords(spec, kind)
    if spec.endswith('.npz'):
        return npz.open_npz(spec, kind)
    if spec.endswith('/') or os.path.isdir(spec):
        return folders.open_folder(spec, kind)
    raise _unknown_spec(spec)


def _unknown_spec(spec):
    return UserError(f'unknown data spec {spec!r}: not an embedded dataset '
                     f'({", ".join(sorted(embedded.EMBEDDED_KINDS))}), tfds:NAME, '
                     'PATTERN.tfrecord*, FILE.npz nor a DIR/ of class folders')


def check_without_reading(spec, kind=None, data_dir=None):
    """Checks what can be told of a spec without reading or preparing any data: its form,
    that its file, directory or glob exists, an embedded dataset's kind. A one-line error
    otherwise. Returns the size of its test split where that is known without reading
    (the embedded datasets), else None."""
    if spec in embedded.EMBEDDED_KINDS:
        _check_kind(spec, embedded.EMBEDDED_KINDS[spec], kind)
        return embedded.builder(spec, data_dir).builder_config.split_sizes()['test']
    if spec.startswith(TFDS_PREFIX):
        return None
    if tfrecords.is_tfrecord_spec(spec):
        if not tf.io.gfile.glob(spec):
            raise UserError(f'no TFRecord files match {spec}')
    elif spec.endswith('.npz'):
        if not os.path.isfile(spec):
            raise UserError(f'no such .npz file: {spec}')
    elif spec.endswith('/') or os.path.isdir(spec):
        if not os.path.isdir(spec):
            raise UserError(f'no such directory: {spec}')
    else:
        raise _unknown_spec(spec)
    return None


def _check_kind(name, holds, kind):
    if kind is not None and holds != kind:
        raise UserError(f'dataset {name!r} holds {holds}s but this model reads {kind}s')


def evaluation_source(spec, kind, default_name, data_dir=None):
    """What to evaluate on: the test split, else the whole source."""
    train, test = open_splits(spec or default_name, kind, data_dir)
    return test or train


def train_and_eval_sources(data_spec, eval_spec, kind, default_name, data_dir=None):
    """(train, eval) Sources of a training run; see the module docstring for the held-out split."""
    train, test = open_splits(data_spec or default_name, kind, data_dir)
    if eval_spec:
        return train, evaluation_source(eval_spec, kind, default_name, data_dir)
    if test is not None:
        return train, test
    return HeldOutPart(train, evaluation=False), HeldOutPart(train, evaluation=True)


class HeldOutPart(source.Source):
    """The training part or the held-out evaluation part of a source."""

    def __init__(self, whole, evaluation):
        self.whole = whole
        self.evaluation = evaluation
        part = 'its held-out tenth' if evaluation else 'all but its held-out tenth'
        self.info = dataclasses.replace(whole.info, spec=f'{whole.info.spec} ({part})', num_examples=None,
                                        most_examples=whole.info.most_examples)

    def records(self, shard, shuffle_seed):
        return self.whole.records(shard, shuffle_seed).filter(self._in_this_part)

    def shard_description(self, shard):
        return self.whole.shard_description(shard)

    def _in_this_part(self, origin, index, payload):
        del payload
        # The file's base name, not its path: the split survives moving the data.
        name = tf.strings.regex_replace(origin, '.*/', '')
        key = tf.strings.join([name, tf.strings.as_string(index)], ':')
        held_out = tf.equal(tf.strings.to_hash_bucket_fast(key, HOLDOUT_BUCKETS), 0)
        return held_out if self.evaluation else tf.logical_not(held_out)

    def decode(self, payload, channels, **limit):
        return self.whole.decode(payload, channels, **limit)

    def first_frame_shape(self):
        return self.whole.first_frame_shape()
