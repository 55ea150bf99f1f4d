"""Random training-time augmentation: the `augment` hparam (none | light | strong).

Each training example gets one random warp, drawn in the graph: an affine transform
(shift, rotation, scale, shear) and, at `strong`, an elastic deformation (Simard,
Steinkraus and Platt 2003: uniform random per-pixel offsets in [-1, 1], smoothed by a
Gaussian of width sigma, times alpha; sigma and alpha as Ciresan et al. 2010 chose them).
A clip gets one warp applied to every frame, so the motion between its frames is warped
along with them, never replaced. Pixels are resampled bilinearly with zeros outside the
image (dark background); labels and clip lengths pass through untouched.

Preset ranges; every parameter is drawn uniformly and independently per example. Pixel
amounts are for a 28-pixel side (MNIST) and scale with the image's side (see Strength):

| preset | shift      | rotation | scale       | shear (x += k y) | elastic            |
|--------|------------|----------|-------------|------------------|--------------------|
| none   | -          | -        | -           | -                | -                  |
| light  | +-2 px     | +-8 deg  | 0.90 - 1.10 | +-0.10           | -                  |
| strong | +-3 px     | +-12 deg | 0.85 - 1.15 | +-0.15           | alpha 36, sigma 6  |

`strong`'s elastic field displaces pixels by about 1 px (standard deviation) on 28 x 28,
smoothly enough to change a glyph's ink by at most about 25%; Simard et al.'s sharper
sigma 4 (alpha 34) thickens or thins strokes by up to 90%. `strong`'s rotation and
shear together turn a direction of motion by at most 20.6 degrees, less than the 22.5
degrees that separate the moving-glyph clips' 8 direction classes (the elastic field
bends it locally a little more).

Warps are stateless: an example's warp depends only on the run's seed, the worker's shard
and the example's place in the training stream (which batch, which slot of it), counted
after shuffling and repeating, so the same seed gives the same augmented batches and
every pass over the data gets fresh warps. Each example still gets a warp of its own,
but they are drawn and applied a batch at a time (see `augmented`).
"""

import dataclasses
import math
import random
from typing import NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from input_fns import CLIP, FRAMES_KEY, IMAGE_KEY

AUGMENTATIONS = ('none', 'light', 'strong')
# The image side the presets' pixel amounts are given for (MNIST's 28 x 28).
REFERENCE_SIDE = 28
AUTOTUNE = tf.data.AUTOTUNE
# The Gaussian kernel reaches this many sigmas each side; beyond it the weights are < 1.2%
# of the centre's.
_BLUR_RADIUS_SIGMAS = 3


@dataclasses.dataclass(frozen=True)
class Strength:
    """The ranges of one preset.

    Attributes:
      shift: most translation along each axis, in pixels of a REFERENCE_SIDE side
        (scaled by height / REFERENCE_SIDE and width / REFERENCE_SIDE).
      rotation: most rotation about the image centre, in degrees.
      scale: (least, most) zoom factor, the same along both axes.
      shear: most horizontal shear factor k (x += k * y about the centre).
      elastic_alpha, elastic_sigma: Simard et al.'s amplitude and smoothing width, in
        pixels of a REFERENCE_SIDE side; alpha 0 means no elastic deformation. For a side
        f times as long, sigma is scaled by f and alpha by f**2 (blurring white noise
        divides its amplitude by sigma), so that the displacements scale by f.
    """
    shift: float
    rotation: float
    scale: Tuple[float, float]
    shear: float
    elastic_alpha: float = 0.0
    elastic_sigma: float = 0.0


PRESETS = {
    'light': Strength(shift=2.0, rotation=8.0, scale=(0.9, 1.1), shear=0.1),
    'strong': Strength(shift=3.0, rotation=12.0, scale=(0.85, 1.15), shear=0.15,
                       elastic_alpha=36.0, elastic_sigma=6.0),
}


class Warp(NamedTuple):
    """N drawn warps of H x W images, one per example.

    projective: float32 [N, 8], each the map from output to input pixel coordinates as
      tf.raw_ops.ImageProjectiveTransformV3 reads it (a0 a1 a2 b0 b1 b2 c0 c1).
    displacement: float32 [N, H, W, 2], (dy, dx) in pixels: after the affine transform,
      output pixel (y, x) reads (y + dy, x + dx); None for no elastic deformation.
    """
    projective: tf.Tensor
    displacement: Optional[tf.Tensor]


def augmented(batches, kind, augment, seed=None, shard_index=0):
    """The training batches, each example warped at random; `batches` itself for 'none'.

    Args:
      batches: a Dataset of (features, labels) batches as input_fns/__init__.py describes
        them, H and W known statically; clips padded with zero frames (which stay zero).
      kind: input_fns.IMAGE or input_fns.CLIP.
      augment: one of AUGMENTATIONS.
      seed: the run's seed; None draws one (the warps then differ from run to run).
      shard_index: this worker's shard, so that workers draw different warps.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f'augment={augment!r} must be one of {", ".join(AUGMENTATIONS)}')
    if augment == 'none':
        return batches
    if seed is None:
        seed = random.SystemRandom().randrange(2 ** 31)
    warp_batch = _batch_warper(kind, PRESETS[augment], (seed, shard_index))
    # A batch at a time: example by example, the overhead of running many small ops
    # costs 28 x 28 images 5 to 9 times the CPU (clips about the same either way).
    return batches.enumerate().map(warp_batch, num_parallel_calls=AUTOTUNE, deterministic=True)


def _batch_warper(kind, strength, run_key):
    """(position int64 [], (features, labels)) -> (features, labels) with warped pixels."""
    pixels_key = FRAMES_KEY if kind == CLIP else IMAGE_KEY

    def warp_batch(position, batch):
        features, labels = batch
        seed = tf.random.experimental.stateless_fold_in(tf.constant(run_key, tf.int64), position)
        pixels = features[pixels_key]
        frames = pixels if kind == CLIP else pixels[:, tf.newaxis]
        warp = random_warps(strength, tf.shape(frames)[0], frames.shape[2], frames.shape[3], seed)
        warped = warp_frames(frames, warp)
        warped = warped if kind == CLIP else warped[:, 0]
        return dict(features, **{pixels_key: warped}), labels

    return warp_batch


def random_warps(strength, count, height, width, seed):
    """A Warp of `count` examples of `height` x `width` pixels, drawn from `strength`'s
    ranges; seed int64 [2]."""
    affine_seed, elastic_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    displacement = None
    if strength.elastic_alpha:
        displacement = _elastic_displacement(strength, count, height, width, elastic_seed)
    return Warp(_affine_projective(strength, count, height, width, affine_seed), displacement)


def warp_frames(frames, warp):
    """float32 [N, T, H, W, C] -> the same, every frame of example i warped by warp i,
    values kept in 0..255."""
    if warp.displacement is None:
        warped = _projected(frames, warp.projective)
    else:
        # One resampling for both parts: a second bilinear pass would blur thin strokes.
        rows, columns = _sampling_grid(warp.projective, warp.displacement)
        warped = _bilinear(frames, rows, columns)
    # Bilinear weights sum to 1 only up to rounding: keep the raw pixel range exact.
    return tf.clip_by_value(warped, 0.0, 255.0)


def _projected(frames, projective):
    """float32 [N, T, H, W, C] -> the same, example i's frames mapped by projective [N, 8]."""
    _, _, height, width, channels = frames.shape
    clip_shape = tf.shape(frames)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.reshape(frames, [-1, height, width, channels]),
        transforms=tf.repeat(projective, clip_shape[1], axis=0), output_shape=[height, width],
        fill_value=0.0, interpolation='BILINEAR', fill_mode='CONSTANT')
    return tf.reshape(warped, clip_shape)


def _affine_projective(strength, count, height, width, seed):
    """float32 [count, 8]: random affine maps about the image centre, output -> input.

    The forward map is p -> A (p - centre) + centre + shift with A = rotation . shear .
    scale; ImageProjectiveTransformV3 wants its inverse, A^-1 (p - centre - shift) + centre.
    """
    draws = tf.unstack(tf.random.stateless_uniform([5, count], seed, -1.0, 1.0))
    angle = math.radians(strength.rotation) * draws[0]
    shear = strength.shear * draws[1]
    least, most = strength.scale
    scale = least + (most - least) * (draws[2] + 1.0) / 2.0
    shift_x = strength.shift * width / REFERENCE_SIDE * draws[3]
    shift_y = strength.shift * height / REFERENCE_SIDE * draws[4]
    cos, sin = tf.cos(angle), tf.sin(angle)
    # A^-1 = shear^-1 . rotation(-angle) / scale, as rows (a0, a1) and (b0, b1).
    a0, a1 = (cos + shear * sin) / scale, (sin - shear * cos) / scale
    b0, b1 = -sin / scale, cos / scale
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    from_x, from_y = centre_x + shift_x, centre_y + shift_y
    a2 = centre_x - a0 * from_x - a1 * from_y
    b2 = centre_y - b0 * from_x - b1 * from_y
    zero = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)


def _elastic_displacement(strength, count, height, width, seed):
    """float32 [count, H, W, 2]: smoothed uniform noise, Simard et al.'s displacement fields."""
    side_ratio = math.sqrt(height * width) / REFERENCE_SIDE
    noise = tf.random.stateless_uniform([count, height, width, 2], seed, -1.0, 1.0)
    smooth = _gaussian_blurred(noise, strength.elastic_sigma * side_ratio)
    return strength.elastic_alpha * side_ratio ** 2 * smooth


def _gaussian_blurred(fields, sigma):
    """float32 [N, H, W, D] -> the same, each of the N * D planes blurred (zeros beyond
    the edges), as two matrix products: faster than convolving with kernels this wide."""
    _, height, width, _ = fields.shape
    along_rows = tf.einsum('yi,nixd->nyxd', _blur_matrix(height, sigma), fields)
    return tf.einsum('xj,nyjd->nyxd', _blur_matrix(width, sigma), along_rows)


def _blur_matrix(size, sigma):
    """float32 [size, size]: row i holds the Gaussian kernel centred on pixel i, cut at
    _BLUR_RADIUS_SIGMAS sigmas and normalized as a whole kernel (the part beyond the edges
    reads zeros)."""
    radius = math.ceil(_BLUR_RADIUS_SIGMAS * sigma)
    offsets = np.arange(size)[:, np.newaxis] - np.arange(size)[np.newaxis, :]
    kernel_sum = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).sum()
    weights = np.exp(-0.5 * (offsets / sigma) ** 2) * (np.abs(offsets) <= radius)
    return (weights / kernel_sum).astype(np.float32)


def _sampling_grid(projective, displacement):
    """(rows, columns), float32 [N, H, W] each: where output pixel (y, x) of example i reads
    its input, (y + dy, x + dx) mapped by the affine projective [N, 8] (c0 = c1 = 0)."""
    _, height, width, _ = displacement.shape
    rows = tf.range(height, dtype=tf.float32)[:, tf.newaxis] + displacement[..., 0]
    columns = tf.range(width, dtype=tf.float32)[tf.newaxis, :] + displacement[..., 1]
    a0, a1, a2, b0, b1, b2 = (projective[:, index, tf.newaxis, tf.newaxis] for index in range(6))
    return b0 * columns + b1 * rows + b2, a0 * columns + a1 * rows + a2


def _bilinear(frames, rows, columns):
    """float32 [N, T, H, W, C] read at (rows, columns) [N, H, W] of example i for every one
    of its frames, bilinear, zeros outside.

    Coordinates are clamped into a 1-pixel zero border, where all four neighbours are zero.
    """
    _, _, height, width, channels = frames.shape
    clip_shape = tf.shape(frames)
    rows = tf.clip_by_value(rows, -1.0, float(height))
    columns = tf.clip_by_value(columns, -1.0, float(width))
    top, left = tf.floor(rows), tf.floor(columns)
    below, right = rows - top, columns - left  # the weights of the lower and right neighbours
    # The top left neighbour's place in _neighbour_stacks, whose frames are (H + 2) x (W + 2).
    corner = tf.cast(top + 1, tf.int32) * (width + 2) + tf.cast(left + 1, tf.int32)
    frame_starts = tf.range(clip_shape[0] * clip_shape[1]) * ((height + 2) * (width + 2))
    index = (tf.reshape(corner, [-1, 1, height * width])
             + tf.reshape(frame_starts, [clip_shape[0], clip_shape[1], 1]))
    values = tf.gather(_neighbour_stacks(frames), tf.reshape(index, [-1]))
    values = tf.reshape(values, [clip_shape[0], clip_shape[1], height * width, 4, channels])
    weights = tf.stack([(1 - below) * (1 - right), (1 - below) * right,
                        below * (1 - right), below * right], axis=-1)  # [N, H, W, 4]
    weights = tf.reshape(weights, [-1, 1, height * width, 4, 1])
    return tf.reshape(tf.reduce_sum(values * weights, axis=3), clip_shape)


def _neighbour_stacks(frames):
    """float32 [N, T, H, W, C] -> [N * T * (H + 2) * (W + 2), 4 * C]: for each pixel (y, x)
    of the frames bordered with zeros (1 pixel before, 2 after), the pixels (y, x),
    (y, x + 1), (y + 1, x), (y + 1, x + 1), so that one gather reads all four neighbours."""
    padded = tf.pad(frames, [[0, 0], [0, 0], [1, 2], [1, 2], [0, 0]])
    stacks = tf.concat([padded[:, :, :-1, :-1], padded[:, :, :-1, 1:],
                        padded[:, :, 1:, :-1], padded[:, :, 1:, 1:]], axis=-1)
    return tf.reshape(stacks, [-1, 4 * frames.shape[-1]])
