"""TFRecord shards: Examples and SequenceExamples decoded in the graph, and bad records."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli
from estimator_models.errors import UserError
from input_fns import BAD_RECORDS_KEY, FRAMES_KEY, IMAGE_KEY, LENGTH_KEY, writing
from input_fns.sources import tfrecords
from input_fns.sources.source import bad_record_message


def _png(pixels):
    return tf.io.encode_png(np.asarray(pixels, np.uint8)).numpy()


def _example(encoded, label):
    """An image Example built field by field, so that it may hold anything."""
    return tf.train.Example(features=tf.train.Features(feature={
        tfrecords.ENCODED_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        tfrecords.IMAGE_LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def _digit(value, height=28, width=28, channels=1):
    return np.full((height, width, channels), value, np.uint8)


def test_images_of_several_sizes_and_formats_decode_in_file_order(tmp_path):
    images = [_digit(10, 28, 28), _digit(20, 40, 30), _digit(30, 20, 50, 3)]
    encoded = [_png(images[0]), tf.io.encode_jpeg(images[1], quality=100).numpy(), _png(images[2])]
    path = _write(tmp_path / 'mixed.tfrecord', [_example(data, label) for label, data in enumerate(encoded)])
    shards, test = tfrecords.open_tfrecords(str(tmp_path / '*.tfrecord*'), 'image')
    assert test is None
    assert shards.info.kind == 'image' and shards.info.frame_shape == (28, 28, 1)
    assert shards.info.num_classes == 3 and shards.info.num_examples is None
    decoded = list(shards.examples(channels=1, num_classes=3).as_numpy_iterator())
    assert [label for _, label in decoded] == [0, 1, 2]
    assert [features[IMAGE_KEY].shape for features, _ in decoded] == [(28, 28, 1), (40, 30, 1), (20, 50, 1)]
    assert decoded[0][0][IMAGE_KEY].max() == 10 and abs(int(decoded[1][0][IMAGE_KEY].mean()) - 20) <= 1
    assert path.endswith('mixed.tfrecord')


def test_clips_of_3_to_12_frames_come_back_frame_by_frame(tmp_path):
    clips = [[_png(_digit(16 * label + frame, 32, 32)) for frame in range(length)]
             for label, length in enumerate([3, 12, 7])]
    _write(tmp_path / 'clips.tfrecord', [writing.clip_sequence_example(clip, label).SerializeToString()
                                         for label, clip in enumerate(clips)])
    source, _ = tfrecords.open_tfrecords(str(tmp_path / 'clips.tfrecord'), 'clip')
    assert source.info.kind == 'clip' and source.info.frame_shape == (32, 32, 1)
    for (features, label), length in zip(source.examples(1, 3).as_numpy_iterator(), [3, 12, 7]):
        assert features[LENGTH_KEY] == length and features[FRAMES_KEY].shape == (length, 32, 32, 1)
        np.testing.assert_array_equal(features[FRAMES_KEY][:, 0, 0, 0], 16 * label + np.arange(length))


def test_metadata_written_beside_the_shards_gives_classes_and_count(tmp_path):
    examples = [(_png(_digit(label)), label) for label in (0, 1, 1)]
    writing.write_tfrecords(examples, str(tmp_path / 'digits'), 2,
                            writing.ShardContents('image', ['zero', 'one', 'two']), progress=False)
    source, _ = tfrecords.open_tfrecords(str(tmp_path / 'digits.tfrecord*'), 'image')
    assert len(source.files) == 2  # the metadata file is not a shard
    assert source.info.class_names == ('zero', 'one', 'two') and source.info.num_examples == 3
    assert sorted(label for _, label in source.examples(1, 3).as_numpy_iterator()) == [0, 1, 1]


def test_gzip_shards_are_read(tmp_path):
    path = str(tmp_path / 'digits.tfrecord.gz')
    with tf.io.TFRecordWriter(path, options='GZIP') as writer:
        writer.write(_example(_png(_digit(5)), 4))
    source, _ = tfrecords.open_tfrecords(path, 'image')
    [(features, label)] = list(source.examples(1, 5).as_numpy_iterator())
    assert label == 4 and features[IMAGE_KEY].max() == 5


def test_training_order_is_fixed_by_the_seed_and_files_are_interleaved(tmp_path):
    for shard in range(4):
        _write(tmp_path / f'd.tfrecord-{shard}', [_example(_png(_digit(shard * 10 + i)), shard) for i in range(10)])
    source, _ = tfrecords.open_tfrecords(str(tmp_path / 'd.tfrecord-*'), 'image')

    def first_pixels(seed):
        examples = source.examples(1, 4, shuffle_seed=seed).take(40)
        return [int(features[IMAGE_KEY][0, 0, 0]) for features, _ in examples.as_numpy_iterator()]

    order = first_pixels(seed=5)
    assert order == first_pixels(seed=5) and sorted(order) == list(range(40))
    assert order[:4] != sorted(order[:4]) or order != first_pixels(seed=6)
    assert len({pixel // 10 for pixel in order[:4]}) == 4  # the first four come from four files


@pytest.mark.parametrize('bad_record', ['truncated_png', 'not_an_image', 'label_out_of_range', 'empty'])
def test_a_bad_image_record_is_named_or_skipped_and_counted(tmp_path, bad_record):
    good = _png(_digit(9))
    bad = {'truncated_png': _example(good[:40], 1), 'not_an_image': _example(b'hello', 1),
           'label_out_of_range': _example(good, 7), 'empty': _example(b'', 1)}[bad_record]
    records = [_example(good, 0), _example(good, 1), bad, _example(good, 2)]
    path = _write(tmp_path / 'digits.tfrecord', records)
    source, _ = tfrecords.open_tfrecords(path, 'image')
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(source.examples(1, 3).as_numpy_iterator())
    assert bad_record_message(raised.value.message).startswith(f'bad record 2 of {path} cannot be read')
    kept = list(source.examples(1, 3, skip_bad_records=True).as_numpy_iterator())
    assert [label for _, label in kept] == [0, 1, 2]
    assert kept[-1][0][BAD_RECORDS_KEY] == 1


def test_a_clip_whose_frames_differ_in_size_is_a_bad_record(tmp_path):
    good = writing.clip_sequence_example([_png(_digit(1, 32, 32))] * 3, 0).SerializeToString()
    mixed = writing.clip_sequence_example([_png(_digit(1, 32, 32)), _png(_digit(1, 16, 16))], 1)
    path = _write(tmp_path / 'clips.tfrecord', [good, good, mixed.SerializeToString()])
    source, _ = tfrecords.open_tfrecords(path, 'clip')
    kept = list(source.examples(1, 2, skip_bad_records=True).as_numpy_iterator())
    assert len(kept) == 2 and kept[-1][0][BAD_RECORDS_KEY] == 1  # the last record, counted too
    with pytest.raises(tf.errors.InvalidArgumentError, match='bad record'):
        list(source.examples(1, 2).as_numpy_iterator())


def test_missing_empty_and_foreign_files_are_named_errors(tmp_path):
    with pytest.raises(UserError, match='no TFRecord files match'):
        tfrecords.open_tfrecords(str(tmp_path / 'none.tfrecord*'), 'image')
    with pytest.raises(UserError, match='hold no records'):
        tfrecords.open_tfrecords(_write(tmp_path / 'empty.tfrecord', []), 'image')
    clip = writing.clip_sequence_example([_png(_digit(1))], 0).SerializeToString()
    with pytest.raises(UserError, match='holds clips but this model reads images'):
        tfrecords.open_tfrecords(_write(tmp_path / 'clip.tfrecord', [clip]), 'image')
    (tmp_path / 'text.tfrecord').write_bytes(b'this is not a TFRecord file at all')
    with pytest.raises(UserError, match='cannot read'):
        tfrecords.open_tfrecords(str(tmp_path / 'text.tfrecord'), 'image')
    unlabelled = tf.train.Example(features=tf.train.Features(feature={
        'pixels': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'']))})).SerializeToString()
    with pytest.raises(UserError, match=r'no image/encoded feature \(see docs/data.md for the schema\)'):
        tfrecords.open_tfrecords(_write(tmp_path / 'foreign.tfrecord', [unlabelled]), 'image')


def _digits_tfrecord(tmp_path, digits_npz, corrupt_at=None):
    """The .npz digits as TFRecord shards, one record replaced by a truncated PNG."""
    saved = np.load(digits_npz, allow_pickle=False)
    records = [_example(_png(image[..., None]), label) for image, label in zip(saved['x'], saved['y'])]
    if corrupt_at is not None:
        records[corrupt_at] = _example(_png(saved['x'][0][..., None])[:30], 1)
    return _write(tmp_path / 'digits.tfrecord', records)


def test_training_stops_on_a_bad_record_with_one_line_naming_it(tmp_path, digits_npz):
    path = _digits_tfrecord(tmp_path, digits_npz, corrupt_at=77)
    model_dir = str(tmp_path / 'run')
    args = ['--model=pixel_row_lstm', f'--data={path}', f'--model_dir={model_dir}', '--train_steps=20',
            '--checkpoint_every=20', '--hparams=rnn_units=8,batch_size=32']
    failed = run_cli('train', *args, check=False)
    assert failed.returncode == 2
    error_lines = [line for line in failed.stderr.splitlines() if line.startswith('error:')]
    assert error_lines == [f'error: bad record 77 of {path} cannot be read: it does not parse or decode, '
                           'its frames differ in size, or its label is out of range '
                           '(--skip_bad_records drops such records)']
    assert 'Traceback' not in failed.stderr

    finished = run_cli('train', *args, '--skip_bad_records', f'--model_dir={model_dir}-skip')
    assert 'input/bad_records 1' in finished.stdout or 'input/bad_records 0' in finished.stdout
    assert 'done: accuracy' in finished.stdout
    events = _scalar_events(model_dir + '-skip')
    assert events.get('input/bad_records') == 1.0
    saved = json.load(open(os.path.join(model_dir + '-skip', 'hparams.json')))
    assert saved['hparams']['skip_bad_records'] is True


def _scalar_events(model_dir):
    """{tag: last value} of the training run's scalar summaries."""
    values = {}
    for name in sorted(os.listdir(model_dir)):
        if name.startswith('events.out.tfevents'):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(model_dir, name)):
                for value in event.summary.value:
                    values[value.tag] = value.simple_value
    return values
