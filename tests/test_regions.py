"""Regions as a sequence (cnn_lstm `sequence=regions`, `grid=RxC`): the cells and their
features against numpy, a step per cell, and the option trained and served like predict."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import (TINY_WITHOUT_BATCH_NORM, held_out_arrays, run_cli, serve_each_in_one_fresh_process,
                      train_on_a_few_examples)
from estimator_models.errors import UserError
from estimator_models.layers import regions
from estimator_models.running import experiment
from estimator_models.serving import exporting
from input_fns import BOXES_KEY, IMAGE_KEY, NUM_BOXES_KEY


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


GRID_CASES = [('2x3', 1, 6), ('3x3', 2, 5)]


@pytest.fixture(scope='module')
def grids_trained(digits_npz, tmp_path_factory):
    """{grid: (loss before, loss after, predictions, served outputs)} of a cnn_lstm reading
    each grid of GRID_CASES, trained 25 steps, on 8 held-out digits; one fresh process
    serves every export."""
    results, requests = {}, {}
    for grid, step, _ in GRID_CASES:
        model_dir = str(tmp_path_factory.mktemp(f'grid_{grid}'))
        overrides = dict(TINY_WITHOUT_BATCH_NORM['cnn_lstm'], sequence='regions', grid=grid, step=str(step),
                         pooling='attention')
        run, before, after = train_on_a_few_examples('cnn_lstm', digits_npz, model_dir, steps=25,
                                                     overrides=overrides)
        examples = held_out_arrays(run, 8)
        results[grid] = (before, after, experiment.predict(run, examples))
        export = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                              os.path.join(model_dir, 'export'))
        requests[grid] = (export, 'serving_default', {IMAGE_KEY: examples.inputs.astype(np.float32)})
    served = serve_each_in_one_fresh_process(requests, tmp_path_factory.mktemp('served'))
    return {grid: results[grid] + (served[grid],) for grid in results}


@pytest.mark.parametrize('grid, step, steps_read', GRID_CASES)
def test_regions_train_and_serve_like_estimator_predict(grid, step, steps_read, grids_trained):
    before, after, predicted, served = grids_trained[grid]
    assert after < before
    assert predicted[0]['attention'].shape == (steps_read,)
    np.testing.assert_allclose(served['probabilities'], np.stack([row['probabilities'] for row in predicted]),
                               atol=1e-5)


# Regions from the data: each image's own boxes (regions=boxes).

BOXES = dict(TINY_WITHOUT_BATCH_NORM['cnn_lstm'], sequence='regions', regions='boxes', pooling='attention')


def batch_arrays(run, data):
    """The features of `data`'s examples as the eval input_fn batches them: numpy dicts."""
    batches = run.input_fn(data, tf.estimator.ModeKeys.EVAL)()
    arrays = [features for features, _ in batches.as_numpy_iterator()]
    most = max(batch[BOXES_KEY].shape[1] for batch in arrays)
    boxes = [np.pad(batch[BOXES_KEY], [(0, 0), (0, most - batch[BOXES_KEY].shape[1]), (0, 0)])
             for batch in arrays]
    return {IMAGE_KEY: np.concatenate([batch[IMAGE_KEY] for batch in arrays]), BOXES_KEY: np.concatenate(boxes),
            NUM_BOXES_KEY: np.concatenate([batch[NUM_BOXES_KEY] for batch in arrays])}


def test_boxes_from_the_data_train_and_serve_like_predict_and_padding_boxes_change_nothing(
        digits_with_boxes, tmp_path):
    model_dir = str(tmp_path / 'run')
    run, before, after = train_on_a_few_examples('cnn_lstm', digits_with_boxes, model_dir, steps=25,
                                                 overrides=BOXES)
    assert after < before
    eval_source = run.sources()[1]
    inputs = batch_arrays(run, eval_source)
    counts = inputs[NUM_BOXES_KEY]
    assert set(counts.tolist()) == {0, 1, 2, 3, 4}
    predicted = experiment.predict(run, eval_source)
    for row, count in enumerate(counts):
        attention = predicted[row]['attention']
        assert np.all(attention[:max(count, 1)] > 0) and np.all(attention[max(count, 1):] == 0)
    # Junk boxes past each image's count, and more of them: the same answers.
    junk = np.random.default_rng(5).uniform(0, 1, size=(len(counts), 7, 4)).astype(np.float32)
    padded = np.concatenate([inputs[BOXES_KEY], junk[:, :3]], axis=1)
    for row, count in enumerate(counts):
        padded[row, count:] = junk[row, :7 - count] if count < 4 else junk[row, :3]
    export = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                          os.path.join(model_dir, 'export'))
    served = serve_each_in_one_fresh_process({
        'boxes': (export, 'serving_default', inputs),
        'junk_padded': (export, 'serving_default', dict(inputs, **{BOXES_KEY: padded}))}, tmp_path)
    np.testing.assert_allclose(served['boxes']['probabilities'],
                               np.stack([row['probabilities'] for row in predicted]), atol=1e-5)
    np.testing.assert_allclose(served['junk_padded']['logits'], served['boxes']['logits'], atol=1e-5)


def test_regions_from_boxes_need_data_with_boxes(digits_npz, tmp_path):
    result = run_cli('train', '--model=cnn_lstm', f'--data={digits_npz}', f'--model_dir={tmp_path / "run"}',
                     '--hparams=sequence=regions,regions=boxes', check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f'error: regions=boxes reads boxes, and {digits_npz}')
    assert 'has none: TFRecord Examples with image/object/bbox/{ymin,xmin,ymax,xmax} do' in line
    assert not os.path.exists(tmp_path / 'run' / 'checkpoint')
