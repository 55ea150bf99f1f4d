"""Serving signatures: what an exported SavedModel accepts and answers.

One graph serves every signature. Each input kind enters at its own point of one
preprocessing chain, and feeding a later point skips the steps before it:

  inputs (serialized tf.Example) -> image_bytes / frames_bytes -> image / frames -> model

Images:
  serving_default  image        float32 [batch, H, W, C], raw pixels 0..255, model size
  predict_bytes    image_bytes  string  [batch]; PNG, JPEG, GIF or BMP of any size
  classification   inputs       string  [batch] of tf.Example with `image/encoded`
Images of a model that reads boxes (cnn_lstm regions=boxes), in both predict signatures:
                   boxes        float32 [batch, R, 4] (ymin, xmin, ymax, xmax), fractions
                                of the image; past an image's count they are padding
                   num_boxes    int32   [batch]; 0 reads the whole image as one box
                   (classification: the Example's image/object/bbox/{ymin,xmin,ymax,xmax})
Clips:
  serving_default      frames        float32 [batch, T, H, W, C]; every clip T frames long
  predict_with_lengths frames, lengths  as above, plus int32 [batch] true lengths
  predict_bytes        frames_bytes  string [batch, T], one encoded frame each, '' pads
  classification       inputs        tf.Example with `image/encoded`, one bytes value a frame

The predict signatures answer `classes` int64 [batch], `probabilities` float32
[batch, K] and `logits`; classification answers `classes` (class names) string
[batch, K] and `scores` float32 [batch, K].

Hostile input is refused in the graph with an InvalidArgumentError that names the
problem, before it costs memory or reaches the model: an encoded image whose header
claims more than the `max_image_pixels` hparam (checked before decoding), a clip of
more than `max_frames_served` frames (checked before its frames are decoded), a clip
of no frames, lengths outside [1, T], and NaN or infinite pixel values.
"""

import tensorflow as tf

from input_fns import BOXES_KEY, CLIP, FRAMES_KEY, IMAGE_KEY, LENGTH_KEY, NUM_BOXES_KEY, preprocess
from input_fns.sources.tfrecords import BOX_KEYS

# Limits for runs whose hparams predate them (see estimator_models.running.hparams).
DEFAULT_MAX_FRAMES_SERVED = 512

ENCODED_KEY = 'image/encoded'
EXAMPLES_KEY = 'inputs'
IMAGE_BYTES_KEY = 'image_bytes'
FRAMES_BYTES_KEY = 'frames_bytes'
LENGTHS_KEY = 'lengths'
PREDICT_SIGNATURES = ('serving_default', 'predict_bytes')
CLASSIFY_SIGNATURE = 'classification'
LENGTHS_SIGNATURE = 'predict_with_lengths'


def receivers(kind, hparams):
    """Builds the serving inputs in the default graph.

    Returns (features for the model_fn, {signature key: {input name: tensor}}).
    """
    # (height, width, channels, resize policy, max_image_pixels): how to decode and fit.
    size = (hparams['height'], hparams['width'], hparams['channels'], hparams['resize'],
            hparams.get('max_image_pixels', preprocess.DEFAULT_MAX_IMAGE_PIXELS))
    if kind == CLIP:
        features, signatures = _clip_receivers(size, hparams.get('max_frames_served', DEFAULT_MAX_FRAMES_SERVED))
        if hparams.get('head') == 'per_frame':
            # Classify answers one list of classes per input; a clip has one per frame.
            del signatures[CLASSIFY_SIGNATURE]
        return features, signatures
    return _image_receivers(size, reads_boxes(hparams))


def reads_boxes(hparams):
    """Whether the model takes each image's boxes (cnn_lstm sequence=regions, regions=boxes)."""
    return hparams.get('sequence') == 'regions' and hparams.get('regions') == 'boxes'


def _image_receivers(size, reads_boxes=False):
    examples = tf.compat.v1.placeholder(tf.string, [None], name=EXAMPLES_KEY)
    parsed_features = {ENCODED_KEY: tf.io.FixedLenFeature([], tf.string)}
    if reads_boxes:
        parsed_features.update({key: tf.io.VarLenFeature(tf.float32) for key in BOX_KEYS})
    parsed = tf.io.parse_example(examples, parsed_features)
    image_bytes = tf.compat.v1.placeholder_with_default(
        parsed[ENCODED_KEY], [None], name=IMAGE_BYTES_KEY)
    decoded = tf.map_fn(lambda encoded: preprocess.decode_and_fit(encoded, *size), image_bytes,
                        fn_output_signature=tf.float32)
    image = tf.compat.v1.placeholder_with_default(decoded, [None] + list(size[:3]), name=IMAGE_KEY)
    features = {IMAGE_KEY: _checked_pixels(image, IMAGE_KEY)}
    signatures = {
        'serving_default': {IMAGE_KEY: image},
        'predict_bytes': {IMAGE_BYTES_KEY: image_bytes},
        CLASSIFY_SIGNATURE: {EXAMPLES_KEY: examples},
    }
    if reads_boxes:
        boxes, counts = _box_inputs(parsed)
        features.update({BOXES_KEY: boxes, NUM_BOXES_KEY: _checked_box_counts(counts, boxes, image)})
        for key in ('serving_default', 'predict_bytes'):
            signatures[key].update({BOXES_KEY: boxes, NUM_BOXES_KEY: counts})
    return features, signatures


def _box_inputs(parsed):
    """The `boxes` and `num_boxes` inputs, by default the parsed Examples' boxes."""
    edges = [tf.RaggedTensor.from_sparse(parsed[key]) for key in BOX_KEYS]
    parsed_boxes = tf.stack([edge.to_tensor() for edge in edges], axis=-1)  # [B, R, 4]
    boxes = tf.compat.v1.placeholder_with_default(parsed_boxes, [None, None, 4], name=BOXES_KEY)
    counts = tf.compat.v1.placeholder_with_default(
        tf.cast(edges[0].row_lengths(), tf.int32), [None], name=NUM_BOXES_KEY)
    return boxes, counts


def _checked_box_counts(counts, boxes, images):
    """int32 [B] box counts as they are, once there is one per image and each lies in
    [0, R] for boxes [B, R, 4]."""
    checks = [
        _require(tf.equal(tf.size(counts), tf.shape(images)[0]),
                 NUM_BOXES_KEY + ': {} counts for {} images', [tf.size(counts), tf.shape(images)[0]]),
        _require(tf.equal(tf.shape(boxes)[0], tf.shape(images)[0]),
                 BOXES_KEY + ': boxes for {} images, not {}', [tf.shape(boxes)[0], tf.shape(images)[0]]),
        _require(tf.reduce_all(tf.logical_and(counts >= 0, counts <= tf.shape(boxes)[1])),
                 NUM_BOXES_KEY + ': a count outside 0..{} (the boxes given) in {}', [tf.shape(boxes)[1], counts]),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(counts)


def _clip_receivers(size, max_frames):
    # Unfed, `inputs` is an empty batch, and so is everything parsed from it: `lengths`
    # then falls back to "every clip is T frames long", which is what serving_default means.
    examples = tf.compat.v1.placeholder_with_default(
        tf.constant([], tf.string), [None], name=EXAMPLES_KEY)
    parsed = tf.io.parse_example(examples, {ENCODED_KEY: tf.io.VarLenFeature(tf.string)})
    frames_bytes = tf.compat.v1.placeholder_with_default(
        tf.sparse.to_dense(parsed[ENCODED_KEY], default_value=''), [None, None], name=FRAMES_BYTES_KEY)
    # Checked only on the way to the decoder: `lengths` below reads the unfed (empty)
    # default of frames_bytes whenever frames are fed instead.
    decoded = _decode_frames(_checked_clip_length(frames_bytes, max_frames, FRAMES_BYTES_KEY), size)
    frames = tf.compat.v1.placeholder_with_default(decoded, [None, None] + list(size[:3]), name=FRAMES_KEY)
    lengths_from_bytes = tf.reduce_sum(tf.cast(tf.not_equal(frames_bytes, ''), tf.int32), axis=1)
    full_lengths = tf.fill(tf.shape(frames)[:1], tf.shape(frames)[1])
    lengths = tf.compat.v1.placeholder_with_default(
        tf.cond(tf.size(lengths_from_bytes) > 0, lambda: lengths_from_bytes, lambda: full_lengths),
        [None], name=LENGTHS_KEY)
    checked_frames = _checked_pixels(_checked_clip_length(frames, max_frames, FRAMES_KEY), FRAMES_KEY)
    # The lengths are checked against the checked frames, so that a request breaking both
    # (no frames at all) is always told about its frames first, never one or the other.
    return {FRAMES_KEY: checked_frames, LENGTH_KEY: _checked_lengths(lengths, checked_frames)}, {
        'serving_default': {FRAMES_KEY: frames},
        LENGTHS_SIGNATURE: {FRAMES_KEY: frames, LENGTHS_KEY: lengths},
        'predict_bytes': {FRAMES_BYTES_KEY: frames_bytes},
        CLASSIFY_SIGNATURE: {EXAMPLES_KEY: examples},
    }


def _decode_frames(frames_bytes, size):
    """string [B, T] ('' for padding) -> float32 [B, T, H, W, C]; padding frames are zero."""
    height, width, channels = size[:3]

    def decode_one(encoded):
        return tf.cond(tf.equal(encoded, ''),
                       lambda: tf.zeros([height, width, channels]),
                       lambda: preprocess.decode_and_fit(encoded, *size))

    flat = tf.map_fn(decode_one, tf.reshape(frames_bytes, [-1]), fn_output_signature=tf.float32)
    return tf.reshape(flat, tf.concat([tf.shape(frames_bytes), [height, width, channels]], axis=0))


def _checked_clip_length(clips, max_frames, name):
    """`clips` [B, T, ...] as they are, once T is known to lie in [1, max_frames]."""
    frames = tf.shape(clips, out_type=tf.int64)[1]
    checks = [
        _require(frames > 0, name + ': a clip of no frames ({} frames in every clip)', [frames]),
        _require(frames <= max_frames, name + ': clips of {} frames, more than max_frames_served={}',
                 [frames, max_frames]),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(clips)


def _checked_lengths(lengths, frames):
    """int32 [B] lengths as they are, once there is one per clip of `frames` [B, T, ...]
    and each lies in [1, T] (0 is an empty clip). Every check waits for those of `frames`,
    so that a request breaking both is always told about its frames."""
    shape = tf.shape(frames)
    with tf.control_dependencies([frames]):
        checks = [
            _require(tf.equal(tf.size(lengths), shape[0]),
                     LENGTHS_KEY + ': {} lengths for {} clips', [tf.size(lengths), shape[0]]),
            _require(tf.reduce_all(lengths > 0), LENGTHS_KEY + ': an empty clip (a length below 1) in {}',
                     [lengths]),
            _require(tf.reduce_all(lengths <= shape[1]),
                     LENGTHS_KEY + ': a length beyond the {} frames given in {}', [shape[1], lengths]),
        ]
    with tf.control_dependencies(checks):
        return tf.identity(lengths)


def _checked_pixels(pixels, name):
    """float32 pixels of any shape as they are, once all are finite."""
    finite = _require(tf.reduce_all(tf.math.is_finite(pixels)),
                      name + ': NaN or infinite pixel values (expected raw pixels 0..255)', [])
    with tf.control_dependencies([finite]):
        return tf.identity(pixels)


def _require(condition, template, values):
    """An Assert op whose error is `template` with `values` filled in (tf.strings.format)."""
    return tf.debugging.Assert(condition, [tf.strings.format(template, values)], summarize=1)


def signature_defs(signature_inputs, predictions, class_names):
    """The SavedModel SignatureDefs from receivers()' inputs and the model's predictions."""
    # A user's model_fn may have no logits (estimator_models.legacy.user_model_fn).
    predict_outputs = {key: predictions[key] for key in ('classes', 'probabilities', 'logits', 'attention')
                       if key in predictions}
    definitions = {}
    for key, inputs in signature_inputs.items():
        if key == CLASSIFY_SIGNATURE:
            names = tf.constant(list(class_names))
            batch_names = tf.tile(names[tf.newaxis], [tf.shape(predictions['probabilities'])[0], 1])
            definitions[key] = tf.compat.v1.saved_model.classification_signature_def(
                inputs[EXAMPLES_KEY], batch_names, predictions['probabilities'])
        else:
            definitions[key] = tf.compat.v1.saved_model.predict_signature_def(inputs, predict_outputs)
    return definitions
