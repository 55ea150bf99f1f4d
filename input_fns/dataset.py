"""The input_fn factory: any Source -> the tf.data.Dataset an Estimator reads.

On top of a source's decoded examples it fits every image (or frame) to the model's
input size, shuffles within a bounded buffer, repeats, batches (clips padded to the
longest clip of their batch, their true lengths kept as a feature), warps each training
example at random as the `augment` hparam says (input_fns.augment) and prefetches. All
of it runs in the graph: no Python in the training step.

Under a TF_CONFIG cluster each worker reads its own shard of the training data: the
Estimator hands the input_fn its RunConfig (parameter-server mode) or an InputContext
(tf.distribute strategies), and the source splits by file, or by record when it has
fewer files than workers.
"""

import tensorflow as tf

from input_fns import CLIP, FRAMES_KEY, IMAGE_KEY, augment, preprocess
from input_fns.sources import source

TRAIN = tf.estimator.ModeKeys.TRAIN
AUTOTUNE = tf.data.AUTOTUNE
# Frames per clip assumed when sizing the in-memory cache of a clip source.
CACHE_CLIP_FRAMES = 12


def make_input_fn(data, mode, hparams, batch_size, seed=None, skip_bad_records=False,
                  num_examples=None):
    """Returns an input_fn for Estimator.train / evaluate / predict.

    Args:
      data: an input_fns.sources.source.Source.
      mode: a tf.estimator.ModeKeys; TRAIN shuffles (with `seed`, within a buffer of
        `shuffle_buffer` examples), repeats forever and warps each example at random as
        the `augment` hparam says (input_fns.augment), the others read every example
        once, in order, unchanged.
      hparams: dict with the model's `height`, `width`, `channels`, `num_classes`,
        `resize` policy and `shuffle_buffer`; optionally `augment` (default 'none').
      batch_size: examples per batch.
      skip_bad_records: drop records that cannot be read (counted in the BAD_RECORDS_KEY
        feature) instead of stopping at the first with an error naming it.
      num_examples: read only the first this many examples of the source.

    The dataset yields (features, labels): features as described in input_fns/__init__.py,
    clips padded to the longest clip of their batch; labels int32 [batch];
    BAD_RECORDS_KEY counts the records dropped so far in the current pass.
    """
    training = mode == TRAIN
    fit = _fitter(data.info.kind, hparams, data.info.frame_shape)
    pad_or_batch = _batcher(data.info, batch_size)

    def input_fn(config=None, input_context=None):
        shard = training_shard(config, input_context) if training else source.Shard()
        if shard.count > 1:
            print(f'reads part {shard.index + 1} of {shard.count} of {data.info.spec}: '
                  f'{data.shard_description(shard)}', flush=True)
        examples = data.examples(hparams['channels'], hparams['num_classes'], shard,
                                 seed if training else None, skip_bad_records, transform=fit,
                                 max_image_pixels=hparams.get('max_image_pixels'))
        if num_examples:
            examples = examples.take(num_examples)
        if training and fits_in_memory(data.info, hparams, shard):
            # Decoded once, then every later pass reads memory: decoding small images
            # costs more CPU than a training step's other work (BENCHMARKS.md).
            examples = examples.cache()
        if training:
            examples = examples.shuffle(hparams['shuffle_buffer'], seed=seed,
                                        reshuffle_each_iteration=True).repeat()
        batches = pad_or_batch(examples)
        if training:
            # After the cache and the repeat, so that every pass draws fresh warps.
            batches = augment.augmented(batches, data.info.kind, hparams.get('augment', 'none'),
                                        seed, shard.index)
        return batches.prefetch(AUTOTUNE)

    return input_fn


def fits_in_memory(info, hparams, shard=source.Shard()):
    """Whether this worker's share of `info`'s examples, decoded to float32 at the
    model's input size, fits in `cache_train_mb` (clips counted at CACHE_CLIP_FRAMES
    frames, or `max_frames` when it is set)."""
    budget_mb = hparams.get('cache_train_mb', 0)
    if not budget_mb or not info.most_examples:
        return False
    frames = 1 if info.kind != CLIP else (hparams.get('max_frames') or CACHE_CLIP_FRAMES)
    pixels = hparams['height'] * hparams['width'] * hparams['channels'] * frames
    return info.most_examples / shard.count * pixels * 4 <= budget_mb * 2 ** 20


def _batcher(info, batch_size):
    """Dataset -> batched Dataset: clips padded with zeros to the longest of their batch,
    and boxes to the most boxes of an image in it."""
    if info.kind == CLIP or info.has_boxes:
        return lambda examples: examples.padded_batch(batch_size)
    return lambda examples: examples.batch(batch_size)


def training_shard(config=None, input_context=None):
    """This worker's Shard of the training data."""
    if input_context is not None and input_context.num_input_pipelines > 1:
        return source.Shard(input_context.input_pipeline_id, input_context.num_input_pipelines)
    if config is not None and config.num_worker_replicas > 1:
        return source.Shard(config.global_id_in_cluster, config.num_worker_replicas)
    return source.Shard()


def _fitter(kind, hparams, frame_shape=None):
    """(features, label) -> the same with pixels float32 at the model's input size.

    When the source declares one frame shape for all its examples, the decoded pixels
    are given it statically (checked when the graph runs), so that pixels already at the
    model's size skip the size test in the graph.
    """
    size = (hparams['height'], hparams['width'], hparams['channels'], hparams['resize'])
    known = list(frame_shape[:2]) + [None] if frame_shape else [None, None, None]

    def fit(features, label):
        if kind == CLIP:
            frames = tf.ensure_shape(features[FRAMES_KEY], [None] + known)
            frames = preprocess.fit_frames(frames[tf.newaxis], *size)[0]
            return dict(features, **{FRAMES_KEY: frames}), label
        image = tf.ensure_shape(features[IMAGE_KEY], known)
        image = preprocess.fit_images(image[tf.newaxis], *size)[0]
        return dict(features, **{IMAGE_KEY: image}), label

    return fit
