"""Synthetic handwriting-like digits in the MNIST format, numpy only.

Every digit is drawn from one of several pen-stroke style templates (a '7'
with or without crossbar, a '4' with open or closed top, ...). A template is a
set of strokes through via points; each rendered glyph jitters the via points,
passes them through a smooth Catmull-Rom spline, applies a smooth random
("elastic") deformation plus slant, rotation and anisotropic scale, and draws
the resulting polylines as thick anti-aliased pen strokes.

The result is normalised the way MNIST was built: the glyph is fitted into a
20x20 box preserving its aspect ratio, then placed in a 28x28 image so that
its centre of mass sits at the image centre (here plus a random offset of a
pixel), white ink on black.

Handwriting (version 3 of the embedded digits) adds what writers and scanners
vary beyond the template: pen pressure swelling and thinning along a stroke,
lighter stroke ends, ink blobs, breaks where the pen skipped, strokes that
overshoot their end or stop short of it (loops that fail to close), a slant
that curves from top to bottom, and a scan blur with its contrast. Pens are
thinner than version 2's, so the ink statistics land near MNIST's (mean
0.1307, standard deviation 0.3081 of pixels scaled to [0, 1]; about a fifth
of the pixels inked): ink_statistics() measures them.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

NUM_CLASSES = 10
CLASS_NAMES = tuple(str(digit) for digit in range(NUM_CLASSES))
IMAGE_SIZE = 28

# MNIST fits every digit into a 20x20 box inside the 28x28 image.
_BOX_FRACTION = 20 / 28
# Strokes are rasterised at this multiple of the output resolution, then
# box-downsampled: that is the anti-aliasing MNIST itself got.
_SUPERSAMPLING = 2
# Spline sampling step along a stroke, in glyph heights (about 1.8 px of a
# 20 px tall digit): fine enough that curves look smooth at 28x28.
_SPLINE_STEP = 0.09
# Glyphs are rasterised in chunks so that the pixels x segments distance
# arrays stay a few MB (cache friendly) whatever the number of examples.
_RENDER_CHUNK = 32
_NUM_THREADS = min(4, os.cpu_count() or 1)
# Ink below this (after the scan blur) reads as background.
_BLACK_LEVEL = 0.06
# Handwriting pens are this much thinner than version 2's (see _pen_widths).
_HANDWRITING_PEN_SCALE = 0.8

# Style templates. Coordinates are (x, y) with y pointing down and the glyph
# roughly one unit tall. A stroke is a list of via points; a stroke whose
# last point equals its first is a closed loop. Points shared between strokes
# get the same jitter, which keeps corners (e.g. the top of a '7') joined.
_TEMPLATES = {
    0: [
        [[(0.3, 0.0), (0.05, 0.2), (0.02, 0.55), (0.15, 0.9), (0.35, 1.0),
          (0.55, 0.8), (0.58, 0.4), (0.5, 0.1), (0.3, 0.0)]],
        [[(0.45, 0.08), (0.3, 0.0), (0.1, 0.15), (0.02, 0.5), (0.12, 0.88),
          (0.32, 1.0), (0.52, 0.85), (0.58, 0.45), (0.48, 0.12),
          (0.28, 0.03)]],
        [[(0.25, 0.0), (0.06, 0.3), (0.05, 0.7), (0.2, 1.0), (0.38, 0.75),
          (0.42, 0.3), (0.25, 0.0)]],
    ],
    1: [
        [[(0.5, 0.0), (0.5, 0.5), (0.48, 1.0)]],
        [[(0.36, 0.15), (0.5, 0.0)], [(0.5, 0.0), (0.5, 0.5), (0.5, 1.0)]],
        [[(0.3, 0.2), (0.5, 0.0)], [(0.5, 0.0), (0.5, 0.5), (0.5, 1.0)],
         [(0.28, 1.0), (0.5, 1.0), (0.72, 1.0)]],
        [[(0.56, 0.0), (0.5, 0.5), (0.42, 1.0)]],
    ],
    2: [
        [[(0.05, 0.25), (0.25, 0.02), (0.5, 0.05), (0.58, 0.28),
          (0.4, 0.55), (0.02, 1.0)],
         [(0.02, 1.0), (0.35, 0.98), (0.68, 1.0)]],
        [[(0.05, 0.25), (0.28, 0.02), (0.52, 0.08), (0.55, 0.35),
          (0.3, 0.62), (0.08, 0.9), (0.12, 1.0), (0.28, 0.92), (0.22, 0.8),
          (0.12, 0.88), (0.3, 1.0), (0.68, 0.98)]],
        [[(0.05, 0.22), (0.28, 0.02), (0.55, 0.12), (0.45, 0.5),
          (0.1, 0.88), (0.12, 1.0), (0.4, 0.95), (0.7, 1.0)]],
    ],
    3: [
        [[(0.05, 0.15), (0.3, 0.0), (0.55, 0.12), (0.5, 0.35), (0.25, 0.48)],
         [(0.25, 0.48), (0.55, 0.6), (0.58, 0.85), (0.32, 1.0),
          (0.02, 0.88)]],
        [[(0.05, 0.0), (0.35, 0.02), (0.6, 0.0)], [(0.6, 0.0), (0.25, 0.42)],
         [(0.25, 0.42), (0.55, 0.55), (0.6, 0.82), (0.35, 1.0),
          (0.02, 0.88)]],
    ],
    4: [
        [[(0.45, 0.0), (0.22, 0.35), (0.0, 0.68)],
         [(0.0, 0.68), (0.35, 0.68), (0.7, 0.66)],
         [(0.45, 0.0), (0.47, 0.5), (0.48, 1.0)]],
        [[(0.1, 0.0), (0.05, 0.35), (0.02, 0.62)],
         [(0.02, 0.62), (0.35, 0.62), (0.7, 0.6)],
         [(0.55, 0.0), (0.55, 0.5), (0.55, 1.0)]],
        [[(0.08, 0.0), (0.03, 0.35), (0.12, 0.6), (0.4, 0.6), (0.62, 0.52)],
         [(0.58, 0.05), (0.56, 0.5), (0.52, 1.0)]],
    ],
    5: [
        [[(0.6, 0.0), (0.35, 0.01), (0.12, 0.0)],
         [(0.12, 0.0), (0.1, 0.22), (0.08, 0.45)],
         [(0.08, 0.45), (0.35, 0.38), (0.58, 0.55), (0.55, 0.85),
          (0.3, 1.0), (0.02, 0.9)]],
        [[(0.15, 0.0), (0.1, 0.22), (0.06, 0.42)],
         [(0.06, 0.42), (0.3, 0.35), (0.55, 0.48), (0.6, 0.75), (0.4, 0.98),
          (0.15, 0.98), (0.02, 0.85)],
         [(0.15, 0.0), (0.4, 0.02), (0.62, 0.0)]],
    ],
    6: [
        [[(0.5, 0.0), (0.25, 0.2), (0.08, 0.5), (0.08, 0.82), (0.3, 1.0),
          (0.52, 0.85), (0.5, 0.6), (0.28, 0.52), (0.08, 0.7)]],
        [[(0.55, 0.05), (0.35, 0.0), (0.15, 0.2), (0.05, 0.55),
          (0.12, 0.9), (0.35, 1.0), (0.55, 0.85), (0.52, 0.62),
          (0.32, 0.55), (0.1, 0.62)]],
        [[(0.45, 0.0), (0.2, 0.35), (0.05, 0.75), (0.25, 1.0), (0.5, 0.88),
          (0.48, 0.62), (0.22, 0.6), (0.08, 0.78)]],
    ],
    7: [
        [[(0.0, 0.0), (0.3, 0.0), (0.62, 0.0)],
         [(0.62, 0.0), (0.45, 0.45), (0.28, 1.0)]],
        [[(0.0, 0.0), (0.3, 0.0), (0.62, 0.0)],
         [(0.62, 0.0), (0.45, 0.45), (0.28, 1.0)],
         [(0.22, 0.5), (0.42, 0.5), (0.62, 0.5)]],
        [[(0.0, 0.12), (0.02, 0.0)], [(0.02, 0.0), (0.3, 0.02), (0.62, 0.0)],
         [(0.62, 0.0), (0.4, 0.5), (0.3, 1.0)]],
        [[(0.0, 0.0), (0.3, 0.02), (0.62, 0.02)],
         [(0.62, 0.02), (0.45, 0.35), (0.35, 0.7), (0.35, 1.0)]],
        [[(0.0, 0.05), (0.3, 0.0), (0.62, 0.02)],
         [(0.62, 0.02), (0.45, 0.35), (0.35, 0.7), (0.33, 1.0)],
         [(0.2, 0.45), (0.4, 0.46), (0.62, 0.44)]],
    ],
    8: [
        [[(0.52, 0.12), (0.3, 0.0), (0.08, 0.12), (0.12, 0.32), (0.3, 0.47),
          (0.52, 0.65), (0.5, 0.9), (0.3, 1.0), (0.08, 0.9), (0.06, 0.68),
          (0.3, 0.47), (0.48, 0.32), (0.52, 0.12)]],
        [[(0.3, 0.45), (0.1, 0.25), (0.3, 0.02), (0.5, 0.25), (0.3, 0.45)],
         [(0.3, 0.45), (0.03, 0.72), (0.3, 1.0), (0.57, 0.72),
          (0.3, 0.45)]],
        [[(0.45, 0.05), (0.25, 0.0), (0.12, 0.15), (0.2, 0.32), (0.38, 0.45),
          (0.55, 0.65), (0.45, 0.92), (0.22, 0.98), (0.05, 0.82),
          (0.15, 0.6), (0.38, 0.45), (0.5, 0.28), (0.52, 0.12)]],
    ],
    9: [
        [[(0.55, 0.22), (0.35, 0.0), (0.08, 0.12), (0.08, 0.38), (0.3, 0.5),
          (0.55, 0.35), (0.55, 0.22)],
         [(0.55, 0.22), (0.52, 0.6), (0.48, 1.0)]],
        [[(0.55, 0.22), (0.35, 0.0), (0.08, 0.12), (0.08, 0.38), (0.3, 0.5),
          (0.55, 0.35), (0.55, 0.22)],
         [(0.55, 0.22), (0.55, 0.65), (0.4, 0.95), (0.15, 0.98)]],
        [[(0.55, 0.3), (0.4, 0.48), (0.12, 0.4), (0.1, 0.12), (0.35, 0.0),
          (0.55, 0.15), (0.55, 0.5), (0.5, 1.0)]],
        [[(0.55, 0.25), (0.35, 0.0), (0.1, 0.08), (0.05, 0.3), (0.25, 0.45),
          (0.55, 0.25)],
         [(0.55, 0.25), (0.58, 0.6), (0.45, 0.9), (0.25, 1.0),
          (0.05, 0.9)]],
    ],
}


def _catmull_rom_weights(t):
    """Uniform Catmull-Rom basis at parameters t (float64 [K]) -> [K, 4]."""
    t2, t3 = t * t, t * t * t
    return 0.5 * np.stack([-t + 2 * t2 - t3,
                           2 - 5 * t2 + 3 * t3,
                           t + 4 * t2 - 3 * t3,
                           -t2 + t3], axis=1)


def _stroke_sampling_matrix(points):
    """Linear map from a stroke's via points to its spline samples.

    Args:
      points: float64 [V, 2] via points; closed loop if last == first.
    Returns:
      float64 [K, V] matrix M such that M @ points samples the spline at
      roughly _SPLINE_STEP spacing, endpoints included.
    """
    num_points = len(points)
    closed = num_points > 2 and np.allclose(points[0], points[-1])
    rows = []
    for span in range(num_points - 1):
        if closed:
            # The duplicated closing point is skipped so that the tangent
            # wraps around the loop smoothly.
            loop = num_points - 1
            neighbours = [(span + k - 1) % loop for k in range(4)]
        else:
            neighbours = [span - 1, span, span + 1, span + 2]
        length = np.linalg.norm(points[span + 1] - points[span])
        count = max(2, int(np.ceil(length / _SPLINE_STEP)))
        weights = _catmull_rom_weights(np.arange(count) / count)
        block = np.zeros((count, num_points))
        for column, index in enumerate(neighbours):
            # Open strokes get phantom end points mirrored through the ends
            # (P[-1] = 2 P[0] - P[1]), which is linear in the via points.
            if index < 0:
                block[:, 0] += 2 * weights[:, column]
                block[:, 1] -= weights[:, column]
            elif index >= num_points:
                block[:, -1] += 2 * weights[:, column]
                block[:, -2] -= weights[:, column]
            else:
                block[:, index] += weights[:, column]
        rows.append(block)
    end = np.zeros((1, num_points))
    end[0, -1] = 1.0
    rows.append(end)
    return np.concatenate(rows)


def _compile_template(strokes):
    """Precomputes everything needed to sample a template in batch.

    Returns:
      dict with 'via' float64 [U, 2] unique via points, 'sampling' float64
      [K, U] spline sampling matrix over them, and 'seg_start' int64 [S]
      indices of the samples starting a segment (segment = start, start+1).
    """
    all_points = np.concatenate([np.asarray(s, dtype=np.float64)
                                 for s in strokes])
    via, inverse = np.unique(all_points, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    blocks, seg_start, offset, first = [], [], 0, 0
    first_segments, last_segments = [], []
    for stroke in strokes:
        stroke = np.asarray(stroke, dtype=np.float64)
        local = _stroke_sampling_matrix(stroke)
        block = np.zeros((len(local), len(via)))
        # Re-express the stroke's columns over the shared unique points.
        np.add.at(block.T, inverse[first:first + len(stroke)], local.T)
        blocks.append(block)
        first_segments.append(len(seg_start))
        seg_start.extend(range(offset, offset + len(local) - 1))
        last_segments.append(len(seg_start) - 1)
        offset += len(local)
        first += len(stroke)
    return {'via': via, 'sampling': np.concatenate(blocks),
            'seg_start': np.asarray(seg_start),
            'first_segments': np.asarray(first_segments),
            'last_segments': np.asarray(last_segments)}


_COMPILED = [(digit, _compile_template(style))
             for digit in range(NUM_CLASSES)
             for style in _TEMPLATES[digit]]
# Styles of a digit are consecutive in _COMPILED.
_STYLE_COUNT = np.bincount([digit for digit, _ in _COMPILED])
_FIRST_STYLE = np.cumsum(_STYLE_COUNT) - _STYLE_COUNT


def _random_styles(digits, rng):
    """Uniformly random style template index per digit, int64 [N]."""
    pick = np.floor(rng.random(len(digits)) * _STYLE_COUNT[digits])
    return _FIRST_STYLE[digits] + pick.astype(np.int64)


def _random_centerlines(template, count, rng, handwriting):
    """Samples jittered, deformed centre lines of one template.

    Returns:
      float64 [count, K, 2] spline samples (x, y), y down, arbitrary scale.
    """
    via = template['via'][None]
    # Per-glyph wobble strength: some writers are neat, some sloppy.
    wobble = rng.uniform(0.01, 0.045, size=(count, 1, 1))
    via = via + wobble * rng.standard_normal((count,) + via.shape[1:])
    points = np.einsum('kv,nvd->nkd', template['sampling'], via)
    points = _elastic(points, rng)
    points = _random_affine(points, rng)
    return _uneven_slant(points, rng) if handwriting else points


def _uneven_slant(points, rng):
    """A slant that changes from top to bottom: x moves by bend * y^2 (y from the
    glyph's centre, in glyph heights), so the glyph's axis curves.

    Args/returns: float64 [N, K, 2], centred.
    """
    bend = rng.normal(0.0, 0.25, size=(len(points), 1))
    bent = points.copy()
    bent[..., 0] += bend * points[..., 1] ** 2
    return bent


def _elastic(points, rng):
    """Smooth random displacement field: two random sine waves per axis.

    Args/returns: float64 [N, K, 2] points, displaced in place of a pixel
    elastic distortion (same effect, much cheaper on a centre line).
    """
    count = len(points)
    shape = (count, 2, 2)
    freq = rng.uniform(1.0, 3.0, size=shape) * rng.choice([-1, 1], size=shape)
    phase = rng.uniform(0, 2 * np.pi, size=(count, 1, 2))
    amplitude = rng.uniform(0.0, 0.04, size=(count, 1, 2))
    # wave[n, k, axis] = sin(freq[axis] . p + phase[axis])
    wave = np.sin(np.einsum('nkd,nad->nka', points, freq) + phase)
    return points + amplitude * wave


def _random_affine(points, rng):
    """Random slant, rotation and anisotropic scale about the glyph centre.

    Args/returns: float64 [N, K, 2].
    """
    count = len(points)
    # Handwriting leans right more often than left.
    slant = np.clip(rng.normal(0.1, 0.15, count), -0.25, 0.4)
    angle = np.deg2rad(np.clip(rng.normal(0, 6, count), -15, 15))
    aspect = np.exp(rng.normal(0, 0.15, count))
    cos, sin = np.cos(angle), np.sin(angle)
    matrix = np.empty((count, 2, 2))
    # Shear with y pointing down: the top of the glyph moves right.
    matrix[:, 0, 0] = aspect * cos
    matrix[:, 0, 1] = -slant * cos - sin
    matrix[:, 1, 0] = aspect * sin
    matrix[:, 1, 1] = -slant * sin + cos
    centred = points - points.mean(axis=1, keepdims=True)
    return np.einsum('nij,nkj->nki', matrix, centred)


def _fit_to_box(points, radius, box):
    """Scales and centres centre lines so the inked glyph fills the box.

    Args:
      points: float64 [N, K, 2]; radius: float64 [N] pen radius in output
        pixels; box: box side in output pixels.
    Returns:
      float64 [N, K, 2] in output pixel units, ink inside [0, box]^2.
    """
    low, high = points.min(axis=1), points.max(axis=1)
    extent = (high - low).max(axis=1)
    scale = (box - 2 * radius) / np.maximum(extent, 1e-6)
    centre = (low + high) / 2
    return ((points - centre[:, None]) * scale[:, None, None]) + box / 2


def _rasterise(starts, ends, radius, box):
    """Draws thick segments with supersampling, returns box-filtered ink.

    Distances are computed for every (pixel, segment) pair of every glyph;
    the pixel grid is separable so the x and y parts are broadcast.

    Args:
      starts, ends: float32 [N, S, 2] segment end points, output pixels.
      radius: float32 [N] pen radius in output pixels, or [N, S] one per
        segment (0 leaves only a faint trace, as a skipping pen does).
      box: output side length in pixels.
    Returns:
      float32 [N, box, box] ink coverage in [0, 1].
    """
    ss = _SUPERSAMPLING
    centres = (np.arange(box * ss, dtype=np.float32) + 0.5) / ss
    edge = ends - starts
    inv_len2 = 1.0 / np.maximum((edge ** 2).sum(-1), 1e-6)
    # Layout [N, S, Y, X]: the final min over segments then runs over large
    # contiguous slices, far faster than reducing a short trailing axis.
    start_x, start_y = starts[..., 0, None, None], starts[..., 1, None, None]
    edge_x, edge_y = edge[..., 0, None, None], edge[..., 1, None, None]
    inv_len2 = inv_len2[..., None, None]
    dx = centres[None, None, None, :] - start_x
    dy = centres[None, None, :, None] - start_y
    # Position of the closest point along each segment, clamped to it.
    t = dx * (edge_x * inv_len2) + dy * (edge_y * inv_len2)
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    # In-place arithmetic: these arrays are the bulk of the render time.
    off_x = t * edge_x
    np.subtract(dx, off_x, out=off_x)
    off_x *= off_x
    off_y = np.multiply(t, edge_y, out=t)
    np.subtract(dy, off_y, out=off_y)
    off_y *= off_y
    off_x += off_y
    if radius.ndim == 1:
        inside = radius[:, None, None] - np.sqrt(off_x.min(axis=1))
    else:
        # Each segment its own width: the pixel's depth inside the widest cover.
        np.sqrt(off_x, out=off_x)
        np.subtract(radius[..., None, None], off_x, out=off_x)
        inside = off_x.max(axis=1)
    # One supersample of soft edge keeps the high-res raster itself smooth.
    ink = np.clip(inside * ss + 0.5, 0.0, 1.0)
    n = len(ink)
    return ink.reshape(n, box, ss, box, ss).mean(axis=(2, 4))


def _template_segments(template, count, rng, size, handwriting):
    """Random pen segments for `count` glyphs of one template.

    Returns:
      starts, ends: float32 [count, S, 2] segment end points in pixels of
        the glyph box (side round(size * 20 / 28)).
      radius: float32 [count] pen radius in pixels; with `handwriting`,
        [count, S], one per segment.
    """
    box = int(round(size * _BOX_FRACTION))
    # Pen radius in pixels of a 28 px image, from fine pen to marker.
    radius = rng.uniform(0.7, 2.1, count) * size / IMAGE_SIZE
    points = _fit_to_box(_random_centerlines(template, count, rng, handwriting),
                         radius, box).astype(np.float32)
    seg = template['seg_start']
    starts, ends = points[:, seg], points[:, seg + 1]
    if not handwriting:
        return starts, ends, radius.astype(np.float32)
    starts, ends = _overshoot(starts, ends, template, rng, box)
    return starts, ends, _pen_widths(radius, template, rng).astype(np.float32)


def _overshoot(starts, ends, template, rng, box):
    """Some strokes run on past their end point or start before their start:
    the end segment is lengthened by 50-200%, kept inside the box.

    Args/returns: float32 [N, S, 2] segment starts and ends, box pixels.
    """
    starts, ends = starts.copy(), ends.copy()
    count = len(starts)
    for segments, moved, fixed in ((template['last_segments'], ends, starts),
                                   (template['first_segments'], starts, ends)):
        chosen = rng.random((count, len(segments))) < 0.2
        stretch = rng.uniform(0.5, 2.0, (count, len(segments), 1)) * chosen[..., None]
        edge = moved[:, segments] - fixed[:, segments]
        moved[:, segments] = np.clip(moved[:, segments] + stretch * edge, 0.5, box - 0.5)
    return starts, ends


def _pen_widths(radius, template, rng):
    """Per-segment pen radius float64 [N, S] from each glyph's radius [N].

    Pressure swells and thins along the strokes, stroke ends are lighter,
    and some glyphs get an ink blob, a break where the pen skipped, or a
    stroke that stops short of its end (a loop that fails to close).
    """
    count, segments = len(radius), len(template['seg_start'])
    position = np.arange(segments) / max(segments - 1, 1)
    amplitude = rng.uniform(0.0, 0.4, (count, 1))
    frequency = rng.uniform(0.5, 3.0, (count, 1))
    phase = rng.uniform(0, 2 * np.pi, (count, 1))
    pressure = 1.0 + amplitude * np.sin(2 * np.pi * frequency * position + phase)
    ends = np.concatenate([template['first_segments'], template['last_segments']])
    pressure[:, ends] *= rng.uniform(0.55, 1.0, (count, 1))
    rows = np.arange(count)
    blob = rng.random(count) < 0.15
    pressure[rows[blob], rng.integers(0, segments, blob.sum())] *= rng.uniform(1.4, 1.9, blob.sum())
    skipped = rng.random(count) < 0.15
    first_skip = rng.integers(1, max(segments - 2, 2), skipped.sum())
    for offset in range(2):
        pressure[rows[skipped], np.minimum(first_skip + offset, segments - 1)] = 0.0
    stops_short = rng.random((count, len(template['last_segments']))) < 0.12
    for stroke, last in enumerate(template['last_segments']):
        short = rows[stops_short[:, stroke]]
        pressure[short, last] = 0.0
        pressure[short, max(last - 1, template['first_segments'][stroke])] = 0.0
    # Thinner on average than version 2's pens: MNIST's mean ink is 0.131, not 0.150.
    return _HANDWRITING_PEN_SCALE * radius[:, None] * pressure


def _apply_pen_pressure(ink, rng):
    """Most strokes saturate, some are a little faint, the ink is slightly
    uneven; background pixels stay exactly 0. float32 [N, H, W] in and out.
    """
    gain = rng.uniform(1.0, 1.6, (len(ink), 1, 1)).astype(np.float32)
    texture = 1.0 + 0.08 * rng.standard_normal(ink.shape, dtype=np.float32)
    return np.clip(ink * gain * texture, 0.0, 1.0)


def _centre_of_mass_placement(boxes, size, rng):
    """Places box images in a canvas by centre of mass, plus a random jitter.

    Args:
      boxes: float32 [N, B, B] ink; size: canvas side (> B).
    Returns:
      float32 [N, size, size].
    """
    n, box = boxes.shape[:2]
    coords = np.arange(box) + 0.5
    mass = boxes.sum(axis=(1, 2)) + 1e-6
    com_y = (boxes.sum(axis=2) * coords).sum(axis=1) / mass
    com_x = (boxes.sum(axis=1) * coords).sum(axis=1) / mass
    # Real MNIST digits are not perfectly centred either.
    jitter = rng.integers(-1, 2, size=(2, n))
    top = np.round(size / 2 - com_y).astype(int) + jitter[0]
    left = np.round(size / 2 - com_x).astype(int) + jitter[1]
    # Never push ink over the border: clamp using the inked rows/columns.
    rows, cols = boxes.max(axis=2) > 0, boxes.max(axis=1) > 0
    first_row, last_row = rows.argmax(1), box - 1 - rows[:, ::-1].argmax(1)
    first_col, last_col = cols.argmax(1), box - 1 - cols[:, ::-1].argmax(1)
    top = np.clip(top, -first_row, size - 1 - last_row)
    left = np.clip(left, -first_col, size - 1 - last_col)
    # Paste into a padded canvas so negative offsets need no special case.
    pad = box
    canvas = np.zeros((n, size + 2 * pad, size + 2 * pad), np.float32)
    r = (top + pad)[:, None, None] + np.arange(box)[None, :, None]
    c = (left + pad)[:, None, None] + np.arange(box)[None, None, :]
    canvas[np.arange(n)[:, None, None], r, c] = boxes
    return canvas[:, pad:pad + size, pad:pad + size]


def _scan_blur(images, rng):
    """A Gaussian blur of random width per image (sigma 0-0.9 px), as scanning
    and MNIST's own resampling soften strokes. float32 [N, H, W] in and out."""
    sigma = rng.uniform(0.0, 0.9, (len(images), 1))
    taps = np.arange(-2, 3)
    weights = np.exp(-taps ** 2 / (2 * np.maximum(sigma, 1e-3) ** 2))     # [N, 5]
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2)])
    height, width = images.shape[1:]
    rows = sum(weights[:, k, None, None] * padded[:, k:k + height, :] for k in range(5))
    return sum(weights[:, k, None, None] * rows[:, :, k:k + width] for k in range(5))


def render_glyphs(digits, rng, size=IMAGE_SIZE, handwriting=True):
    """Renders many digit glyphs at once, each centred by centre of mass.

    Args:
      digits: int array [N] of digits 0..9.
      rng: np.random.Generator.
      size: canvas side in pixels; the glyph fills about size * 20/28.
      handwriting: vary what writers and scanners vary beyond the template
        and the pen (pressure along strokes, breaks, blobs, overshooting and
        short strokes, a curving slant, blur); False draws the cleaner glyphs
        of generator version 2 (moving_glyphs' sprites), with the same
        random draws as then.
    Returns:
      float32 [N, size, size] ink in [0, 1] (0 background).
    """
    digits = np.asarray(digits, dtype=np.int64).reshape(-1)
    style = _random_styles(digits, rng)
    box = int(round(size * _BOX_FRACTION))
    jobs = []
    for index, (_, template) in enumerate(_COMPILED):
        members = np.flatnonzero(style == index)
        if len(members):
            starts, ends, radius = _template_segments(template, len(members),
                                                      rng, size, handwriting)
            jobs.extend((members[i:i + _RENDER_CHUNK],
                         starts[i:i + _RENDER_CHUNK],
                         ends[i:i + _RENDER_CHUNK],
                         radius[i:i + _RENDER_CHUNK], box)
                        for i in range(0, len(members), _RENDER_CHUNK))
    boxes = np.zeros((len(digits), box, box), np.float32)
    # numpy releases the GIL inside large ufunc loops, so threads give a
    # near-linear speed-up on the distance computation.
    with ThreadPoolExecutor(_NUM_THREADS) as pool:
        inks = pool.map(lambda job: _rasterise(*job[1:]), jobs)
        for job, ink in zip(jobs, inks):
            boxes[job[0]] = ink
    images = _centre_of_mass_placement(_apply_pen_pressure(boxes, rng), size, rng)
    if not handwriting:
        return images
    # The scanner's contrast brings the blurred stroke cores back to full ink.
    blurred = np.clip(_scan_blur(images, rng) * rng.uniform(1.0, 1.4, (len(images), 1, 1)), 0.0, 1.0)
    # A scanner's black level: the faintest halo of the blur reads as background.
    return np.where(blurred < _BLACK_LEVEL, 0.0, blurred).astype(np.float32)


def render_glyph(digit, rng, size=IMAGE_SIZE):
    """Renders one digit glyph.

    Args:
      digit: int 0..9; rng: np.random.Generator; size: canvas side.
    Returns:
      float32 [size, size] ink in [0, 1] (0 background).
    """
    return render_glyphs([digit], rng, size)[0]


def ink_statistics(images):
    """What can be compared with MNIST without its images: {mean, std} of the
    pixels scaled to [0, 1], the fraction of inked (non-zero) pixels, of
    saturated ones (>= 0.99) and of grey ones between. uint8 [N, H, W] in."""
    pixels = np.asarray(images, np.float64) / 255.0
    return {'mean': pixels.mean(), 'std': pixels.std(), 'inked': (pixels > 0).mean(),
            'saturated': (pixels >= 0.99).mean(), 'grey': ((pixels > 0) & (pixels < 0.99)).mean()}


def render_digits(num_examples, seed):
    """Renders an MNIST-like labelled data set.

    Args:
      num_examples: number of images N.
      seed: seed of np.random.default_rng; same seed, same data.
    Returns:
      images: uint8 [N, 28, 28], 0 background .. 255 ink (white on black).
      labels: int64 [N], digits 0..9 drawn uniformly at random.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=num_examples, dtype=np.int64)
    ink = render_glyphs(labels, rng, IMAGE_SIZE)
    images = np.round(ink * 255).astype(np.uint8)
    return images, labels
