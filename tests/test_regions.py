"""Regions as a sequence (cnn_lstm `sequence=regions`, `grid=RxC`): the cells and their
features against numpy, a step per cell, and the option trained and served like predict."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, held_out_arrays, train_on_a_few_examples
from estimator_models.layers import regions
from estimator_models.running import experiment
from estimator_models.serving import exporting
from input_fns.errors import UserError
from test_backbones import served_in_a_fresh_process


def test_grid_cells_tile_the_image_in_raster_order():
    cells = regions.grid_boxes(2, 3).numpy()
    np.testing.assert_allclose(cells[0], [0, 0, 0.5, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(cells[5], [0.5, 2 / 3, 1, 1], rtol=1e-6)
    areas = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])
    np.testing.assert_allclose(areas.sum(), 1.0, rtol=1e-6)


def test_each_step_holds_the_features_under_its_region():
    # A 4x4 map whose four 2x2 quadrants hold 1, 2, 3 and 4 in every channel: each cell of
    # a 2x2 grid reads only its own quadrant.
    quadrants = np.kron(np.array([[1.0, 2.0], [3.0, 4.0]]), np.ones((2, 2)))
    feature_map = np.repeat(quadrants[np.newaxis, :, :, np.newaxis], 3, axis=-1).astype(np.float32)
    sequence = regions.grid_as_sequence(tf.constant(np.concatenate([feature_map, 2 * feature_map])), '2x2')
    assert sequence.shape == (2, 4, regions.REGION_CROP ** 2 * 3)
    expected = np.repeat([[1.0, 2.0, 3.0, 4.0]], regions.REGION_CROP ** 2 * 3, axis=0).T
    np.testing.assert_allclose(sequence[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(sequence[1].numpy(), 2 * expected, rtol=1e-6)


@pytest.mark.parametrize('grid', ['3', 'x3', '0x2', '2x2x2', 'axb'])
def test_a_malformed_grid_is_refused(grid):
    with pytest.raises(UserError, match='ROWSxCOLUMNS'):
        regions.parse_grid(grid)


@pytest.mark.parametrize('grid, step, steps_read', [('2x3', 1, 6), ('3x3', 2, 5)])
def test_regions_train_and_serve_like_estimator_predict(grid, step, steps_read, digits_npz, tmp_path):
    model_dir = str(tmp_path / 'run')
    overrides = dict(TINY['cnn_lstm'], sequence='regions', grid=grid, step=str(step), pooling='attention')
    run, before, after = train_on_a_few_examples('cnn_lstm', digits_npz, model_dir, steps=25,
                                                 overrides=overrides)
    assert after < before
    examples = held_out_arrays(run, 8)
    predicted = experiment.predict(run, examples)
    assert predicted[0]['attention'].shape == (steps_read,)
    export = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                          os.path.join(model_dir, 'export'))
    np.testing.assert_allclose(served_in_a_fresh_process(export, run, examples, tmp_path),
                               np.stack([row['probabilities'] for row in predicted]), atol=1e-5)
