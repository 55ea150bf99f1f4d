"""Short clips of a handwritten digit moving in one of 8 directions.

The label is the direction of motion. The glyph starts at a uniformly random
position and moves on a torus (it leaves one border and re-enters at the
opposite one), so neither its position nor anything else in a single frame
says where it is heading: only the change between frames does. If the glyph
had to stay inside the canvas instead, its start position would reveal the
direction (it must start far from the border it is heading to).

Each frame also has a label of its own, for per-frame models: whether the glyph has
wrapped around a border yet (at this frame or before). One frame cannot tell: a glyph
near a border may be about to cross it or have just crossed the other one; the frames
before it can.
"""

import numpy as np

from input_fns.embedded import glyphs

NUM_CLASSES = 8
CLASS_NAMES = ('east', 'north_east', 'north', 'north_west', 'west',
               'south_west', 'south', 'south_east')
FRAME_CLASS_NAMES = ('not_wrapped_yet', 'wrapped')
CANVAS_SIZE = 32
MIN_FRAMES, MAX_FRAMES = 6, 12

# Side of the square sprite a glyph is drawn on; the digit itself fills about
# 20/28 of it, i.e. about 10 px.
_SPRITE_SIZE = 14
_MIN_SPEED, _MAX_SPEED = 1.5, 3.0  # pixels per frame
_POSITION_JITTER = 0.2  # pixels, per frame, like a slightly shaky camera
_NOISE_LEVEL = 0.05  # faint uniform background speckle, fraction of full ink


def _trajectories(labels, num_frames, canvas_size, rng):
    """Straight-line, wrapped positions of the sprite's top-left corner.

    Args:
      labels: int64 [N] direction indices, 0 = east, counter-clockwise in
        steps of 45 degrees.
    Returns:
      float64 [N, num_frames, 2] (y, x) positions, not yet wrapped into the canvas.
    """
    count = len(labels)
    angle = labels * (np.pi / 4)
    speed = rng.uniform(_MIN_SPEED, _MAX_SPEED, count)
    # Image rows grow downwards, so "north" is a negative y velocity.
    velocity = speed[:, None] * np.stack([-np.sin(angle), np.cos(angle)], 1)
    start = rng.uniform(0, canvas_size, (count, 2))
    steps = np.arange(num_frames)[None, :, None]
    jitter = rng.normal(0, _POSITION_JITTER, (count, num_frames, 2))
    return start[:, None] + velocity[:, None] * steps + jitter


def wrapped_so_far(positions, canvas_size):
    """int64 [N, T]: 1 from the first frame at which the sprite's corner (positions
    [N, T, 2], unwrapped) has left the canvas it started on, else 0."""
    canvas = np.floor(positions / canvas_size)
    left = np.any(canvas != canvas[:, :1], axis=-1)
    return np.maximum.accumulate(left, axis=1).astype(np.int64)


def _subpixel_shift(sprites, fraction):
    """Bilinearly shifts sprites right/down by a fraction of a pixel.

    Args:
      sprites: float32 [N, S, S]; fraction: float [N, 2] (y, x) in [0, 1).
    Returns:
      float32 [N, S + 1, S + 1]; the extra row and column receive the ink
      pushed over the edge.
    """
    padded = np.pad(sprites, ((0, 0), (1, 1), (1, 1)))
    fy = fraction[:, 0, None, None].astype(np.float32)
    fx = fraction[:, 1, None, None].astype(np.float32)
    # Output pixel k samples the sprite at k - f: between pixels k-1 and k.
    rows = (1 - fy) * padded[:, 1:, :] + fy * padded[:, :-1, :]
    return (1 - fx) * rows[:, :, 1:] + fx * rows[:, :, :-1]


def _add_wrapped(canvas, patches, corner):
    """Adds patches onto canvases, wrapping around at the borders.

    Args:
      canvas: float32 [N, C, C], modified in place.
      patches: float32 [N, P, P] with P <= C, so wrapped indices never
        collide and a plain fancy-indexed += is correct.
      corner: int64 [N, 2] (row, column) of each patch's top-left pixel.
    """
    count, size = patches.shape[:2]
    side = canvas.shape[-1]
    offsets = np.arange(size)
    rows = (corner[:, 0, None] + offsets) % side
    cols = (corner[:, 1, None] + offsets) % side
    # One flat index is much faster than indexing with three index arrays.
    flat = ((np.arange(count)[:, None, None] * side + rows[:, :, None]) * side
            + cols[:, None, :])
    canvas.reshape(-1)[flat] += patches


def render_clips(num_clips, seed, min_frames=MIN_FRAMES,
                 max_frames=MAX_FRAMES, canvas_size=CANVAS_SIZE, with_frame_labels=False):
    """Renders clips of a digit glyph moving in a straight line.

    Args:
      num_clips: number of clips N.
      seed: seed of np.random.default_rng; same seed, same clips.
      min_frames, max_frames: range (inclusive) of clip lengths.
      canvas_size: frame side C in pixels (> the 14 px sprite).
    Returns:
      frames: uint8 [N, max_frames, C, C], 0 background .. 255 ink; frames
        past a clip's length are all zero.
      lengths: int32 [N] in [min_frames, max_frames].
      labels: int64 [N] direction index into CLASS_NAMES.
      frame_labels (only `with_frame_labels`): int64 [N, max_frames] index into
        FRAME_CLASS_NAMES; 0 past a clip's length.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, num_clips, dtype=np.int64)
    lengths = rng.integers(min_frames, max_frames + 1, num_clips,
                           dtype=np.int32)
    digits = rng.integers(0, glyphs.NUM_CLASSES, num_clips)
    sprites = glyphs.render_glyphs(digits, rng, _SPRITE_SIZE, handwriting=False)
    unwrapped = _trajectories(labels, max_frames, canvas_size, rng)
    positions = np.mod(unwrapped, canvas_size)
    corner = np.floor(positions).astype(np.int64)
    fraction = positions - corner
    frames = np.zeros((num_clips, max_frames, canvas_size, canvas_size),
                      np.uint8)
    # Frame by frame keeps the float32 working set small; clips that have
    # already ended are skipped so their frames stay all zero.
    for t in range(max_frames):
        live = np.flatnonzero(lengths > t)
        canvas = rng.random((len(live), canvas_size, canvas_size),
                            np.float32) * _NOISE_LEVEL
        _add_wrapped(canvas,
                       _subpixel_shift(sprites[live], fraction[live, t]),
                       corner[live, t])
        np.clip(canvas, 0.0, 1.0, out=canvas)
        frames[live, t] = (canvas * 255 + 0.5).astype(np.uint8)
    if not with_frame_labels:
        return frames, lengths, labels
    frame_labels = wrapped_so_far(unwrapped, canvas_size)
    frame_labels[np.arange(max_frames)[None] >= lengths[:, None]] = 0
    return frames, lengths, labels, frame_labels
