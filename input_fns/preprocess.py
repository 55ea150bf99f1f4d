"""Image preprocessing shared by the input functions and the serving receivers.

Everything here maps raw pixels to raw pixels (float32, 0..255): scaling to 0..1
happens inside the models, so a served request and an evaluated batch meet the
same graph.
"""

import tensorflow as tf

RESIZE_POLICIES = ('resize', 'pad', 'crop')


def fit_images(images, height, width, channels, policy):
    """Brings images to the model's input size.

    Args:
      images: [N, h, w, c] any numeric dtype, c in {1, 3}, h and w may be dynamic.
      height, width, channels: the model's input size.
      policy: 'resize' (stretch), 'pad' (keep aspect, pad with zeros) or 'crop'
        (keep aspect, cut the central part of the longer side).

    Returns:
      float32 [N, height, width, channels], values on the input's scale.
    """
    images = match_channels(tf.cast(images, tf.float32), channels)
    if images.shape[1] == height and images.shape[2] == width:
        # Already the right size: no resampling, so pixels stay bit-exact.
        return images

    def resampled():
        if policy == 'pad':
            return tf.image.resize_with_pad(images, height, width)
        if policy == 'crop':
            return tf.image.resize(_central_crop_to_aspect(images, height, width), [height, width])
        return tf.image.resize(images, [height, width])

    if images.shape[1] is not None and images.shape[2] is not None:
        return resampled()
    # Size known only when the graph runs (decoded images): the same check, in the graph.
    shape = tf.shape(images)
    same_size = tf.logical_and(tf.equal(shape[1], height), tf.equal(shape[2], width))
    fitted = tf.cond(same_size, lambda: tf.reshape(images, [-1, height, width, channels]), resampled)
    return tf.ensure_shape(fitted, [images.shape[0], height, width, channels])


def fit_frames(frames, height, width, channels, policy):
    """fit_images for clips: [N, T, h, w, c] -> float32 [N, T, height, width, channels]."""
    batch_and_time = tf.shape(frames)[:2]
    flat = tf.reshape(frames, tf.concat([[-1], tf.shape(frames)[2:]], axis=0))
    flat.set_shape([None] + frames.shape[2:].as_list())
    fitted = fit_images(flat, height, width, channels, policy)
    clips = tf.reshape(fitted, tf.concat([batch_and_time, [height, width, channels]], axis=0))
    clips.set_shape([frames.shape[0], frames.shape[1], height, width, channels])
    return clips


def match_channels(images, channels):
    """[N, h, w, c] -> [N, h, w, channels] for c, channels in {1, 3}."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return tf.tile(images, [1, 1, 1, 3])
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(images)
    raise ValueError(f'cannot convert {have} channels to {channels}')


def _central_crop_to_aspect(images, height, width):
    shape = tf.shape(images)
    have_height, have_width = shape[1], shape[2]
    crop_height = tf.minimum(have_height, have_width * height // width)
    crop_width = tf.minimum(have_width, have_height * width // height)
    top = (have_height - crop_height) // 2
    left = (have_width - crop_width) // 2
    return images[:, top:top + crop_height, left:left + crop_width, :]


def decode_and_fit(encoded, height, width, channels, policy):
    """One encoded image (PNG, JPEG, GIF, BMP; any size) -> float32 [height, width, channels].

    The decoder converts the channels (gray <-> RGB) itself, as every reader of encoded
    images in this project does, so a served image and a read one agree.
    """
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return fit_images(image[tf.newaxis], height, width, channels, policy)[0]
