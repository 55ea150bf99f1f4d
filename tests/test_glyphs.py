"""The embedded digits' generator: ink statistics near MNIST's published ones, and the
handwriting variation (pen pressure, breaks, short and overshooting strokes) really drawn."""

import numpy as np

from input_fns.embedded import glyphs

# The per-pixel mean and standard deviation of MNIST's training images scaled to [0, 1]
# (the normalisation constants every MNIST pipeline uses), and its share of inked pixels.
MNIST_MEAN, MNIST_STD, MNIST_INKED = 0.1307, 0.3081, 0.19


def test_digits_have_about_mnists_ink_statistics():
    images, _ = glyphs.render_digits(2000, seed=3)
    statistics = glyphs.ink_statistics(images)
    assert abs(statistics['mean'] - MNIST_MEAN) < 0.01
    assert abs(statistics['std'] - MNIST_STD) < 0.015
    assert abs(statistics['inked'] - MNIST_INKED) < 0.03
    # Anti-aliased, blurred edges: many grey pixels beside the saturated stroke cores.
    assert statistics['grey'] > 0.08 and statistics['saturated'] > 0.03


def test_pen_width_swells_and_thins_along_strokes_with_breaks_and_short_ends():
    template = glyphs._COMPILED[0][1]                                     # a '0': one closed loop
    rng = np.random.default_rng(0)
    widths = glyphs._pen_widths(np.full(4000, 1.5), template, rng)       # [N, S]
    drawn = np.where(widths > 0, widths, np.nan)
    assert np.nanmean(np.nanstd(drawn, axis=1)) > 0.1                    # not one width per glyph
    gaps = (widths == 0).any(axis=1)
    # About 15% skip somewhere and 12% stop short of the loop's end (so it stays open).
    assert 0.2 < gaps.mean() < 0.35
    assert 0.08 < (widths[:, template['last_segments'][0]] == 0).mean() < 0.16
    base = glyphs._HANDWRITING_PEN_SCALE * 1.5
    assert (widths.max(axis=1) > 1.3 * base).mean() > 0.1                 # blobs and pressure swells


def test_overshooting_strokes_stay_inside_the_box():
    template = glyphs._COMPILED[4][1]                                     # a '1' with a flag: two strokes
    rng = np.random.default_rng(1)
    starts, ends, _ = glyphs._template_segments(template, 500, rng, 28, handwriting=True)
    clean = glyphs._template_segments(template, 500, np.random.default_rng(1), 28, handwriting=False)
    box = round(28 * 20 / 28)
    assert starts.min() >= 0.5 and ends.max() <= box - 0.5
    last = template['last_segments']
    lengthened = np.linalg.norm(ends[:, last] - starts[:, last], axis=-1) > \
        1.4 * np.linalg.norm(clean[1][:, last] - clean[0][:, last], axis=-1)
    assert 0.1 < lengthened.mean() < 0.3


def test_moving_glyphs_sprites_stay_clean_and_reproducible():
    digits = np.arange(20) % 10
    clean = glyphs.render_glyphs(digits, np.random.default_rng(5), 32, handwriting=False)
    handwritten = glyphs.render_glyphs(digits, np.random.default_rng(5), 32)
    assert clean.shape == handwritten.shape == (20, 32, 32)
    assert not np.allclose(clean, handwritten)
    np.testing.assert_array_equal(
        clean, glyphs.render_glyphs(digits, np.random.default_rng(5), 32, handwriting=False))
