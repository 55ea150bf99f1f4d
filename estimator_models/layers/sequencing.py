"""Reading images, feature maps and clips as sequences for the recurrent stack."""

import tensorflow as tf


def rows_as_sequence(images):
    """[B, H, W, C] -> [B, H, W*C]: one time step per row, top to bottom."""
    _, height, width, channels = images.shape
    return tf.reshape(images, [-1, height, width * channels])


def columns_as_sequence(images):
    """[B, H, W, C] -> [B, W, H*C]: one time step per column, left to right."""
    return rows_as_sequence(tf.transpose(images, [0, 2, 1, 3]))


def positions_as_sequence(feature_map):
    """[B, H, W, C] -> [B, H*W, C]: one time step per spatial position, in raster order."""
    _, height, width, channels = feature_map.shape
    return tf.reshape(feature_map, [-1, height * width, channels])


def pooled_as_sequence(feature_map):
    """[B, H, W, C] -> [B, H, C]: the spatially averaged vector repeated H times."""
    steps = feature_map.shape[1]
    pooled = tf.reduce_mean(feature_map, axis=[1, 2], keepdims=True)  # [B, 1, 1, C]
    return tf.tile(pooled[:, 0], [1, steps, 1])


SEQUENCERS = {
    'rows': rows_as_sequence,
    'columns': columns_as_sequence,
    'flatten': positions_as_sequence,
    'pooled': pooled_as_sequence,
}
# The sequencers that only move values: a bfloat16 feature map can pass through them as it
# is, where an average is better taken in float32.
REARRANGING_SEQUENCERS = ('rows', 'columns', 'flatten')


def true_frames_as_images(frames, lengths):
    """Every clip's true frames as one batch of images, for one CNN call over them all.

    Args:
      frames: [B, T, H, W, C] clips, each padded after its end to T frames.
      lengths: int32 [B] true lengths.

    Returns:
      ([N, H, W, C] the true frames, clip by clip in order, N = sum(lengths); int32
      [N, 1] the place of each among the B*T frames). The padding is never computed: a
      quarter of the frames of clips of 6 to 12 frames padded to 12.
    """
    true_steps = tf.sequence_mask(lengths, maxlen=tf.shape(frames)[1])                   # [B, T]
    positions = tf.cast(tf.where(tf.reshape(true_steps, [-1])), tf.int32)               # [N, 1]
    images = tf.reshape(frames, [-1] + frames.shape[2:].as_list())                       # [B*T, H, W, C]
    return tf.gather_nd(images, positions), positions


def true_frames_as_sequences(per_frame, positions, clips):
    """Undoes true_frames_as_images on per-frame outputs: [N, ...] -> [B, T, ...] (B, T
    from `clips`), zeros on the padding steps, which the recurrent stack masks."""
    batch_and_time = tf.shape(clips)[:2]
    flat = tf.scatter_nd(positions, per_frame,
                         tf.concat([[batch_and_time[0] * batch_and_time[1]], tf.shape(per_frame)[1:]], axis=0))
    frames = tf.reshape(flat, tf.concat([batch_and_time, tf.shape(per_frame)[1:]], axis=0))
    frames.set_shape([None, None] + per_frame.shape[1:].as_list())
    return frames
