"""Serving input receivers: what an exported SavedModel accepts.

`serving_default` takes raw pixels, float32 0..255, at the model's input size:
  images: `image`  [batch, H, W, C]
  clips:  `frames` [batch, T, H, W, C], every clip T frames long.
"""

import tensorflow as tf

from input_fns import CLIP, FRAMES_KEY, IMAGE_KEY, LENGTH_KEY


def raw_pixels_receiver_fn(kind, hparams):
    """A serving_input_receiver_fn for Estimator.export_saved_model and the exporters."""
    frame_shape = [hparams['height'], hparams['width'], hparams['channels']]

    def receiver_fn():
        if kind == CLIP:
            frames = tf.compat.v1.placeholder(tf.float32, [None, None] + frame_shape, name=FRAMES_KEY)
            shape = tf.shape(frames)
            lengths = tf.fill(shape[:1], shape[1])
            return tf.estimator.export.ServingInputReceiver(
                {FRAMES_KEY: frames, LENGTH_KEY: lengths}, {FRAMES_KEY: frames})
        image = tf.compat.v1.placeholder(tf.float32, [None] + frame_shape, name=IMAGE_KEY)
        return tf.estimator.export.ServingInputReceiver({IMAGE_KEY: image}, {IMAGE_KEY: image})

    return receiver_fn
