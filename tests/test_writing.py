"""The TFRecord schema of docs/data.md and the sharded writer (input_fns.writing)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from input_fns import CLIP, IMAGE, writing

CLASS_NAMES = ['ant', 'bee', 'cat']


def png(value, height=4, width=5, channels=1):
    return writing.encode_pixels(np.full((height, width, channels), value, np.uint8))


def jpeg(value, height=8, width=8):
    return tf.io.encode_jpeg(np.full((height, width, 3), value, np.uint8)).numpy()


IMAGE_FEATURES = {
    writing.ENCODED_KEY: tf.io.FixedLenFeature([], tf.string),
    writing.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    writing.FORMAT_KEY: tf.io.FixedLenFeature([], tf.string),
    writing.HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    writing.WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


def parse_image(serialized):
    return tf.io.parse_single_example(serialized, IMAGE_FEATURES)


def parse_clip(serialized):
    context, frames = tf.io.parse_single_sequence_example(
        serialized,
        context_features={writing.CLIP_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)},
        sequence_features={writing.ENCODED_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
    return context[writing.CLIP_LABEL_KEY], frames[writing.ENCODED_KEY]


def test_image_example_round_trip():
    encoded = png(77, height=4, width=5)
    parsed = parse_image(writing.image_example(encoded, 2, height=4, width=5).SerializeToString())
    assert parsed[writing.ENCODED_KEY].numpy() == encoded
    assert parsed[writing.LABEL_KEY].numpy() == 2
    assert parsed[writing.FORMAT_KEY].numpy() == b'png'
    assert (parsed[writing.HEIGHT_KEY].numpy(), parsed[writing.WIDTH_KEY].numpy()) == (4, 5)
    decoded = tf.io.decode_image(parsed[writing.ENCODED_KEY]).numpy()
    assert decoded.shape == (4, 5, 1) and (decoded == 77).all()


def test_image_example_of_jpeg_without_size():
    example = writing.image_example(jpeg(100), 0)
    parsed = parse_image(example.SerializeToString())
    assert parsed[writing.FORMAT_KEY].numpy() == b'jpeg'
    assert parsed[writing.LABEL_KEY].numpy() == 0
    assert writing.HEIGHT_KEY not in example.features.feature
    assert writing.WIDTH_KEY not in example.features.feature


def test_image_example_rejects_other_formats():
    with pytest.raises(ValueError, match='neither PNG nor JPEG'):
        writing.image_example(b'GIF89a....', 0)


def test_clip_sequence_example_round_trip():
    frames = [png(value) for value in (10, 20, 30)]
    example = writing.clip_sequence_example(frames, 1)
    label, parsed = parse_clip(example.SerializeToString())
    assert label.numpy() == 1
    assert list(parsed.numpy()) == frames
    assert list(example.feature_lists.feature_list) == [writing.ENCODED_KEY]
    assert list(example.context.feature) == [writing.CLIP_LABEL_KEY]


def test_clip_needs_frames():
    with pytest.raises(ValueError, match='at least one frame'):
        writing.clip_sequence_example([], 0)


def test_encode_pixels():
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert (tf.io.decode_png(writing.encode_pixels(pixels)).numpy() == pixels).all()
    floats = np.array([[-3.0, 0.4, 0.6, 254.5, 300.0]])
    decoded = tf.io.decode_png(writing.encode_pixels(floats)).numpy()
    assert decoded.shape == (1, 5, 1)
    assert decoded[0, :, 0].tolist() == [0, 0, 1, 254, 255]


def test_shard_paths():
    assert writing.shard_paths('out/train', 3) == [
        'out/train.tfrecord-00000-of-00003', 'out/train.tfrecord-00001-of-00003',
        'out/train.tfrecord-00002-of-00003']
    with pytest.raises(ValueError):
        writing.shard_paths('out/train', 0)


def records_of(path):
    return [record.numpy() for record in tf.data.TFRecordDataset(path)]


def test_write_three_shards(tmp_path, capsys):
    prefix = str(tmp_path / 'out' / 'train')
    examples = [(png(index), index % 3) for index in range(10)]
    summary = writing.write_tfrecords(examples, prefix, 3,
                                      writing.ShardContents(IMAGE, CLASS_NAMES, frame_shape=(4, 5, 1)))
    paths = writing.shard_paths(prefix, 3)
    assert summary['shards'] == paths
    assert sorted(os.listdir(tmp_path / 'out')) == sorted(
        [os.path.basename(path) for path in paths] + ['train' + writing.METADATA_SUFFIX])
    shards = [records_of(path) for path in paths]
    assert [len(records) for records in shards] == [4, 3, 3]
    # Round-robin: example i is record i // 3 of shard i % 3.
    for index, (encoded, label) in enumerate(examples):
        parsed = parse_image(shards[index % 3][index // 3])
        assert parsed[writing.ENCODED_KEY].numpy() == encoded
        assert parsed[writing.LABEL_KEY].numpy() == label
        assert (parsed[writing.HEIGHT_KEY].numpy(), parsed[writing.WIDTH_KEY].numpy()) == (4, 5)
    with open(prefix + writing.METADATA_SUFFIX) as file:
        assert json.load(file) == {
            'kind': 'image', 'class_names': CLASS_NAMES, 'num_examples': 10,
            'frame_shape': [4, 5, 1], 'shards': [os.path.basename(path) for path in paths]}
    assert summary['examples'] == 10 and summary['classes'] == 3
    assert summary['per_class'] == {'ant': 4, 'bee': 3, 'cat': 3}
    assert summary['bytes'] == sum(os.path.getsize(path) for path in paths)
    assert summary['metadata'] == prefix + writing.METADATA_SUFFIX
    progress = capsys.readouterr().err
    assert progress.endswith('\n') and '10/10 examples' in progress and '100%' in progress


def test_write_clips_without_a_known_size(tmp_path, capsys):
    prefix = str(tmp_path / 'clips')
    clips = ([png(value) for value in range(length)] for length in (3, 5))
    summary = writing.write_tfrecords(zip(clips, [1, 0]), prefix, 1, writing.ShardContents(CLIP, ['a', 'b']),
                                      progress=False)
    assert capsys.readouterr().err == ''
    decoded = [parse_clip(record) for record in records_of(summary['shards'][0])]
    assert [(label.numpy(), len(frames)) for label, frames in decoded] == [(1, 3), (0, 5)]
    with open(summary['metadata']) as file:
        metadata = json.load(file)
    assert metadata['kind'] == 'clip' and metadata['frame_shape'] is None
    assert summary['per_class'] == {'a': 1, 'b': 1}


def test_failed_write_leaves_no_files(tmp_path):
    examples = [(png(1), 0), (png(2), 1), (b'not an image', 0)]
    with pytest.raises(ValueError, match='neither PNG nor JPEG'):
        writing.write_tfrecords(examples, str(tmp_path / 'train'), 2, writing.ShardContents(IMAGE, ['a', 'b']),
                                progress=False)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match='label 5'):
        writing.write_tfrecords([(png(1), 5)], str(tmp_path / 'train'), 2,
                                writing.ShardContents(IMAGE, ['a', 'b']), progress=False)
    assert os.listdir(tmp_path) == []


def test_progress_goes_to_a_log_as_a_few_lines(tmp_path, capsys):
    encoded = png(1)
    writing.write_tfrecords(((encoded, 0) for _ in range(500)), str(tmp_path / 'many'), 2,
                            writing.ShardContents(IMAGE, ['a', 'b']))
    progress = capsys.readouterr().err  # not a terminal: lines, not a redrawn bar
    assert '\r' not in progress and progress.count('\n') <= 3
    assert progress.splitlines()[-1].startswith('500 examples')
    assert 'examples/s' in progress and 'MB' in progress
