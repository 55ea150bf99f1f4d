"""Regions of an image read as a sequence (cnn_lstm's `sequence=regions`).

Each region is a box (ymin, xmin, ymax, xmax) in fractions of the image's height and
width, as the TF Object Detection API gives them. Its step of the sequence is the
feature map under the box sampled at the centres of REGION_CROP x REGION_CROP equal
parts of it (bilinearly, with tf.image.crop_and_resize) and flattened: a region keeps a
little of its layout whatever its size, and reads nothing outside itself.

`regions=grid` gives every image the same `grid=RxC` cells, in raster order;
`regions=boxes` each image its own boxes from the data (input_fns: BOXES_KEY), a
variable number per image, masked in the recurrent stack like the frames of clips.
"""

import re

import tensorflow as tf

from estimator_models.errors import UserError

SOURCES = ('grid', 'boxes')
# A box over the whole image, (ymin, xmin, ymax, xmax): what an image without boxes reads.
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)
REGION_CROP = 2
_GRID = re.compile(r'^([1-9]\d*)x([1-9]\d*)$')


def parse_grid(text):
    """'3x4' -> (3, 4); anything else is a one-line error."""
    match = _GRID.match(str(text))
    if not match:
        raise UserError(f'hparam grid={text!r} must be ROWSxCOLUMNS, e.g. grid=3x3')
    return int(match.group(1)), int(match.group(2))


def grid_boxes(rows, columns):
    """float32 [rows*columns, 4]: the cells of a rows x columns grid, in raster order."""
    tops = tf.range(rows, dtype=tf.float32) / rows
    lefts = tf.range(columns, dtype=tf.float32) / columns
    top, left = tf.meshgrid(tops, lefts, indexing='ij')                    # [rows, columns] each
    top, left = tf.reshape(top, [-1]), tf.reshape(left, [-1])
    return tf.stack([top, left, top + 1.0 / rows, left + 1.0 / columns], axis=1)


def grid_as_sequence(feature_map, grid):
    """[B, h, w, F] -> [B, R*C, REGION_CROP^2 * F]: the cells of `grid` ('RxC') as steps."""
    rows, columns = parse_grid(grid)
    cells = grid_boxes(rows, columns)                                       # [R*C, 4]
    boxes = tf.tile(cells[tf.newaxis], [tf.shape(feature_map)[0], 1, 1])    # [B, R*C, 4]
    return regions_as_sequence(feature_map, boxes)


def whole_image_when_boxless(boxes, counts):
    """(float32 [B, R, 4], int32 [B]) -> the same, an image without boxes given one box:
    the whole image (an empty sequence has no last step to read)."""
    whole = tf.constant(WHOLE_IMAGE)
    boxes = tf.cond(tf.shape(boxes)[1] > 0, lambda: boxes,                  # room when R is 0
                    lambda: tf.zeros([tf.shape(boxes)[0], 1, 4], boxes.dtype))
    first = tf.where(tf.equal(counts, 0)[:, tf.newaxis], whole[tf.newaxis], boxes[:, 0])
    boxes = tf.concat([first[:, tf.newaxis], boxes[:, 1:]], axis=1)
    return boxes, tf.maximum(counts, 1)


def regions_as_sequence(feature_map, boxes):
    """Features of each box, one step per box.

    Args:
      feature_map: float32 [B, h, w, F].
      boxes: float32 [B, R, 4], normalized (ymin, xmin, ymax, xmax) of the image.

    Returns:
      float32 [B, R, REGION_CROP * REGION_CROP * F].
    """
    batch, count = tf.shape(boxes)[0], tf.shape(boxes)[1]
    height, width = feature_map.shape[1:3]
    crops = tf.image.crop_and_resize(
        feature_map, tf.reshape(sampling_boxes(boxes, height, width), [-1, 4]),
        tf.repeat(tf.range(batch), count), [REGION_CROP, REGION_CROP])    # [B*R, c, c, F]
    width = REGION_CROP * REGION_CROP * feature_map.shape[-1]
    sequence = tf.reshape(crops, [batch, count, width])
    sequence.set_shape([None, boxes.shape[1], width])
    return sequence


def sampling_boxes(boxes, height, width):
    """Boxes as fractions of the image -> the boxes crop_and_resize samples between.

    crop_and_resize puts REGION_CROP samples evenly from y1 * (height - 1) to
    y2 * (height - 1), pixel centres counted from 0. For a box spanning rows
    [ymin * height, ymax * height) of the map, the centres of its REGION_CROP equal parts
    lie half a part inside its edges, half a pixel back (x alike).
    """
    scale = tf.constant([height, width, height, width], tf.float32)
    edges = boxes * scale                                                   # [..., 4] in pixels
    inset = (edges[..., 2:] - edges[..., :2]) / (2.0 * REGION_CROP)         # [..., 2]
    first, last = edges[..., :2] + inset - 0.5, edges[..., 2:] - inset - 0.5
    spans = tf.constant([max(height - 1, 1), max(width - 1, 1)] * 2, tf.float32)
    return tf.concat([first, last], axis=-1) / spans
