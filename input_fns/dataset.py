"""The input_fn factory: labelled arrays -> the tf.data.Dataset an Estimator takes.

Arrays are never embedded in the graph as constants (that makes graphs of gigabytes,
see PITFALLS.md): the pipeline shuffles and batches example indices and gathers each
batch from memory with one tf.numpy_function call.
"""

import numpy as np
import tensorflow as tf

from input_fns import CLIP, FRAMES_KEY, IMAGE_KEY, LENGTH_KEY, preprocess

TRAIN = tf.estimator.ModeKeys.TRAIN


def make_input_fn(examples, mode, hparams, batch_size, seed=None):
    """Returns an input_fn for Estimator.train / evaluate / predict.

    Args:
      examples: input_fns.arrays.LabelledArrays.
      mode: a tf.estimator.ModeKeys; TRAIN shuffles (with `seed`) and repeats forever,
        the others read every example once, in order.
      hparams: dict with the model's `height`, `width`, `channels` and `resize` policy.
      batch_size: examples per batch.

    The dataset yields (features, labels): features as described in input_fns/__init__.py,
    clips padded to the longest clip of their batch; labels int32 [batch].
    """
    def input_fn():
        indices = tf.data.Dataset.range(len(examples))
        if mode == TRAIN:
            indices = indices.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
            indices = indices.repeat()
        batches = indices.batch(batch_size)
        batches = batches.map(_batch_gatherer(examples, hparams),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return batches.prefetch(tf.data.AUTOTUNE)

    return input_fn


def _batch_gatherer(examples, hparams):
    """A function from int64 [batch] indices to one (features, labels) batch."""
    size = (hparams['height'], hparams['width'], hparams['channels'], hparams['resize'])
    height, width, channels = examples.frame_shape

    if examples.kind == CLIP:
        def gather_clips(indices):
            batch_lengths = examples.lengths[indices]
            # Pad only to the longest clip in this batch, not the longest in the data.
            frames = examples.inputs[indices, :batch_lengths.max()]
            return frames, batch_lengths, examples.labels[indices].astype(np.int32)

        def clips_batch(indices):
            frames, lengths, labels = tf.numpy_function(
                gather_clips, [indices], [tf.as_dtype(examples.inputs.dtype), tf.int32, tf.int32],
                stateful=False)
            frames.set_shape([None, None, height, width, channels])
            lengths.set_shape([None])
            labels.set_shape([None])
            return {FRAMES_KEY: preprocess.fit_frames(frames, *size), LENGTH_KEY: lengths}, labels

        return clips_batch

    def gather_images(indices):
        return examples.inputs[indices], examples.labels[indices].astype(np.int32)

    def images_batch(indices):
        images, labels = tf.numpy_function(
            gather_images, [indices], [tf.as_dtype(examples.inputs.dtype), tf.int32], stateful=False)
        images.set_shape([None, height, width, channels])
        labels.set_shape([None])
        return {IMAGE_KEY: preprocess.fit_images(images, *size)}, labels

    return images_batch
