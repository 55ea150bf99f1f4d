"""A label per frame (temporal_cnn_lstm `head=per_frame`): accuracy over true frames only,
trained from .npz frame labels and served like Estimator.predict, the embedded clips'
own per-frame task, and data without frame labels refused in one line."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, held_out_arrays, run_cli, served_in_a_fresh_process, train_on_a_few_examples
from estimator_models.layers import head
from estimator_models.running import experiment
from estimator_models.serving import exporting, onnx_export, onnx_serving, receivers
from input_fns import embedded

PER_FRAME = dict(TINY['temporal_cnn_lstm'], head='per_frame', learning_rate='0.005')


def test_accuracy_counts_true_frames_only():
    with tf.Graph().as_default():
        labels = tf.constant([[1, 0, 1, 1], [0, 0, 0, 0]])
        classes = tf.constant([[1, 1, 1, 0], [0, 1, 1, 1]], tf.int64)
        true_frames = tf.sequence_mask([3, 1], maxlen=4, dtype=tf.float32)
        value, update = head.frame_accuracy(labels, classes, true_frames)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.local_variables_initializer())
            session.run(update)
            # 2 of clip 0's 3 frames and clip 1's one frame are right; every padding frame is wrong.
            assert session.run(value) == pytest.approx(0.75)


def test_per_frame_head_trains_and_serves_like_estimator_predict(clips_with_frame_labels, tmp_path):
    model_dir = str(tmp_path / 'run')
    run, before, after = train_on_a_few_examples('temporal_cnn_lstm', clips_with_frame_labels, model_dir,
                                                 steps=30, overrides=PER_FRAME)
    assert run.hparams['num_frame_classes'] == 2
    assert after < before
    examples = held_out_arrays(run, 8)
    predicted = experiment.predict(run, examples)
    export = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                          os.path.join(model_dir, 'export'))
    served = served_in_a_fresh_process(export, run, examples, tmp_path)['probabilities']  # [8, T, 2]
    assert served.shape == examples.inputs.shape[:2] + (2,)
    for row, length in enumerate(examples.lengths):
        np.testing.assert_allclose(served[row, :length], predicted[row]['probabilities'][:length], atol=1e-5)
    # Frames past a clip's end answer uniform probabilities, in the SavedModel and in ONNX.
    padding = np.arange(served.shape[1])[None, :] >= examples.lengths[:, None]
    np.testing.assert_allclose(served[padding], 0.5)
    onnx_file = onnx_export.export_onnx(run, tf.train.latest_checkpoint(model_dir), str(tmp_path / 'onnx'),
                                        saved_model=export)
    answered = onnx_serving.run_onnx(onnx_serving.session(onnx_file), {
        'frames': examples.inputs.astype(np.float32), 'lengths': examples.lengths.astype(np.int32)})
    np.testing.assert_allclose(answered['probabilities'], served, atol=1e-4)
    loaded = tf.saved_model.load(export)
    assert receivers.CLASSIFY_SIGNATURE not in loaded.signatures


def test_the_embedded_clips_label_every_frame(tmp_path_factory, tmp_path):
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    embedded.open_embedded('moving_glyphs', data_dir, 'small')
    hparams = ','.join(f'{key}={value}' for key, value in PER_FRAME.items())
    result = run_cli('train', '--model=temporal_cnn_lstm', '--data=tfds:moving_glyphs/small',
                     f'--data_dir={data_dir}', f'--model_dir={tmp_path / "run"}', '--train_steps=20',
                     f'--hparams={hparams}')
    assert re.search(r'^eval at step 20 on \d+ examples: accuracy 0\.\d+', result.stdout, re.MULTILINE)


def test_clips_without_frame_labels_are_refused_in_one_line(clips_npz, tmp_path):
    result = run_cli('train', '--model=temporal_cnn_lstm', f'--data={clips_npz}',
                     f'--model_dir={tmp_path / "run"}', '--hparams=head=per_frame', check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert 'head=per_frame needs a label per frame' in line
