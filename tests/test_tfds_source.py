"""`tfds:` specs: TFDS datasets read through TfdsSource, offline.

Registered datasets (mnist, ucf101 and its config ucf101_1, cats_vs_dogs, binarized_mnist)
are really prepared here on tiny splits: their real dataset_info, and TFRecord files
named and laid out the way `tfds build` writes them, each record an example of known
pixels and label serialized by the dataset's own features (PNG for mnist, JPEG for
ucf101 frames and cats_vs_dogs). Tests check that TfdsSource decodes exactly what was
written, and the same as TFDS's own reader (`as_dataset`) gives for those files.
"""

import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from estimator_models.errors import UserError
from input_fns import BAD_RECORDS_KEY, CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY, LENGTH_KEY
from input_fns.sources import tfds_source
from input_fns.sources.source import Shard, bad_record_message

# Input and label feature of each dataset prepared here.
FEATURES = {'mnist': ('image', 'label'), 'binarized_mnist': ('image', None),
            'cats_vs_dogs': ('image', 'label'), 'ucf101': ('video', 'label')}


def write_metadata(data_dir, name, split_sizes):
    """Writes the dataset_info of registered dataset `name` (NAME or NAME/CONFIG) as if it
    had been prepared with `split_sizes` {split: [examples in each file]}; no data files.
    Returns the builder."""
    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=list(sizes), num_bytes=0,
                            filename_template=tfds.core.ShardedFileTemplate(
                                data_dir=builder.data_dir, dataset_name=builder.name,
                                split=split, filetype_suffix='tfrecord'))
        for split, sizes in split_sizes.items()]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    return builder


def prepare(data_dir, name, splits):
    """Prepares registered dataset `name` under `data_dir` as `tfds build` would have:
    its dataset_info, and for each split of `splits` {split: [[(pixels, label), ...] of
    each file]} the TFRecord files TFDS expects (e.g. mnist-train.tfrecord-00000-of-00003),
    each record `features.serialize_example` of an example. `pixels` may be encoded bytes
    (written as they are). Returns {split: {file path: [(pixels, label), ...]}}."""
    builder = write_metadata(data_dir, name, {split: [len(examples) for examples in files]
                                              for split, files in splits.items()})
    features = builder.info.features
    written = {}
    for split, files in splits.items():
        paths = [os.fspath(path) for path in builder.info.splits[split].filepaths]
        assert len(paths) == len(files)
        for path, examples in zip(paths, files):
            with tf.io.TFRecordWriter(path) as writer:
                for pixels, label in examples:
                    example = example_of(builder.name, pixels, label)
                    writer.write(features.serialize_example(example))
        written[split] = dict(zip(paths, files))
    return written


def example_of(name, pixels, label):
    """The feature dict TFDS's generator of dataset `name` would yield."""
    input_key, label_key = FEATURES[name]
    example = {input_key: pixels}
    if label_key:
        example[label_key] = label
    if name == 'cats_vs_dogs':
        example['image/filename'] = f'{("cat", "dog")[label]}.jpg'
    return example


def gray_blocks(rng, height, width):
    """uint8 [height, width, 3] that JPEG keeps exactly: gray, constant on each of its
    8x8 DCT blocks (height and width multiples of 8), so JPEG-stored datasets decode to
    these very pixels."""
    blocks = rng.integers(0, 256, (height // 8, width // 8), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[..., None].repeat(3, axis=-1)


def tiny_splits():
    """{dataset: {split: [[(pixels, label), ...] of each file]}}, pixels uint8 arrays."""
    rng = np.random.default_rng(7)

    def digits(count, first_label):
        return [(rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), (first_label + i) % 10)
                for i in range(count)]

    def clip(frames, height, width):
        return np.stack([gray_blocks(rng, height, width) for _ in range(frames)])

    return {
        'mnist': {'train': [digits(4, 0), digits(4, 4), digits(4, 8)], 'test': [digits(5, 3)]},
        'ucf101': {'train': [[(clip(2, 256, 256), 0), (clip(3, 256, 256), 57),
                              (clip(1, 256, 256), 100)]]},
        'ucf101/ucf101_1': {'test': [[(clip(2, 16, 24), 5), (clip(1, 32, 8), 6),
                                      (clip(3, 8, 16), 7)]]},
        'cats_vs_dogs': {'train': [[(gray_blocks(rng, 16, 24), 0), (gray_blocks(rng, 40, 8), 1),
                                    (gray_blocks(rng, 8, 8), 1), (gray_blocks(rng, 24, 32), 0)]]},
        'binarized_mnist': {'train': [[(rng.integers(0, 2, (28, 28, 1), dtype=np.uint8), None)]]},
    }


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    """(data dir, {dataset: {split: {file path: [(pixels, label), ...]}}}) where the
    datasets of `tiny_splits` are prepared: mnist (train: 3 files of 4, test: 1 file of
    5), ucf101 (train: 3 clips of 256x256 frames), ucf101/ucf101_1 (test: 3 clips of
    frames of different sizes), cats_vs_dogs (train: 4 images of different sizes),
    binarized_mnist (train: 1 image)."""
    data_dir = str(tmp_path_factory.mktemp('prepared_tfds'))
    written = {name: prepare(data_dir, name, splits) for name, splits in tiny_splits().items()}
    return data_dir, written


@pytest.fixture
def data_dir(prepared):
    return prepared[0]


@pytest.fixture
def written(prepared):
    return prepared[1]


def decoded(source, channels, shard=Shard(), **kwargs):
    """The examples of `source` through the guard: [(features as numpy, label)]."""
    examples = source.examples(channels, source.info.num_classes, shard, **kwargs)
    return [({key: value.numpy() for key, value in features.items()}, int(label))
            for features, label in examples]


def names(source, shard=Shard()):
    """(file path, index in the file) of each record of `source`, in reading order."""
    return [(origin.numpy().decode(), int(index))
            for origin, index, _ in source.records(shard, None)]


def with_channels(pixels, channels):
    """What decoding gray `pixels` [..., 1] to `channels` channels gives."""
    return pixels if pixels.shape[-1] == channels else np.repeat(pixels, channels, axis=-1)


def assert_examples_equal(examples, expected, channels):
    """`examples` (of `decoded`) hold exactly the pixels and labels of `expected`
    [(pixels, label)], in order."""
    assert len(examples) == len(expected)
    for (features, label), (pixels, expected_label) in zip(examples, expected):
        assert label == expected_label and features[BAD_RECORDS_KEY] == 0
        if FRAMES_KEY in features:
            assert features[LENGTH_KEY] == len(pixels)
            actual = features[FRAMES_KEY]
        else:
            actual = features[IMAGE_KEY]
        assert actual.dtype == np.uint8
        np.testing.assert_array_equal(actual, with_channels(pixels, channels))


def assert_reads_as_written(source, split_written, channels, shard=Shard()):
    """The examples of `source` are those written at their records' names, in order."""
    expected = [split_written[path][index] for path, index in names(source, shard)]
    assert_examples_equal(decoded(source, channels, shard), expected, channels)


def test_mnist_decodes_to_the_images_and_labels_written(data_dir, written):
    train, test = tfds_source.open_tfds('mnist', data_dir, IMAGE)
    assert train.info.spec == 'tfds:mnist:train' and test.info.spec == 'tfds:mnist:test'
    assert (train.info.kind, train.info.frame_shape) == (IMAGE, (28, 28, 1))
    assert train.info.class_names == tuple(str(digit) for digit in range(10))
    assert (train.info.num_examples, test.info.num_examples) == (12, 5)
    assert train.first_frame_shape() == (28, 28, 1)
    [test_examples] = written['mnist']['test'].values()
    assert_examples_equal(decoded(test, channels=3), test_examples, channels=3)  # gray to RGB
    assert_reads_as_written(train, written['mnist']['train'], channels=1)


def test_records_are_named_by_file_and_index(data_dir, written):
    train, _ = tfds_source.open_tfds('mnist:train', data_dir)
    paths = sorted(written['mnist']['train'])
    assert [os.path.basename(path) for path in paths] == [
        f'mnist-train.tfrecord-0000{i}-of-00003' for i in range(3)]
    assert all(os.path.dirname(path) == train.builder.data_dir for path in paths)
    read = names(train)
    assert sorted(read) == all_names(written['mnist']['train']) == [
        (path, index) for path in paths for index in range(4)]
    for path in paths:  # each file in its own order
        assert [index for origin, index in read if origin == path] == [0, 1, 2, 3]


def test_ucf101_decodes_to_the_clips_written(data_dir, written):
    train, test = tfds_source.open_tfds('ucf101', data_dir, CLIP)
    assert test is None  # its metadata here has no test split
    assert (train.info.kind, train.info.frame_shape) == (CLIP, (256, 256, 3))
    assert train.info.num_classes == 101 and train.info.num_examples == 3
    assert train.info.spec == 'tfds:ucf101:train'
    assert train.first_frame_shape() == (256, 256, 3)
    assert_reads_as_written(train, written['ucf101']['train'], channels=3)


def test_images_of_any_size_through_the_generic_features(data_dir, written):
    train, test = tfds_source.open_tfds('cats_vs_dogs', data_dir, IMAGE)
    assert test is None and train.info.frame_shape is None
    assert (train.info.class_names, train.info.num_examples) == (('cat', 'dog'), 4)
    [examples] = written['cats_vs_dogs']['train'].values()
    assert train.first_frame_shape() == examples[0][0].shape == (16, 24, 3)
    assert_reads_as_written(train, written['cats_vs_dogs']['train'], channels=3)


def test_clips_of_any_frame_size(data_dir, written):
    test, _ = tfds_source.open_tfds('ucf101/ucf101_1:test', data_dir, CLIP)
    assert test.info.frame_shape is None and test.info.spec == 'tfds:ucf101/ucf101_1:test'
    assert test.first_frame_shape() == (16, 24, 3)  # the first frame of the first clip
    assert_reads_as_written(test, written['ucf101/ucf101_1']['test'], channels=3)


@pytest.mark.parametrize('name, split, channels', [
    ('mnist', 'test', 1), ('mnist', 'train[3:10]', 1),
    ('ucf101', 'train', 3), ('ucf101/ucf101_1', 'test', 3), ('cats_vs_dogs', 'train', 3)])
def test_reads_what_tfds_own_reader_reads(data_dir, name, split, channels):
    """TFDS's `as_dataset` on the same files is the reference: same examples, each file's
    records in the same order (TFDS reading the files one after the other)."""
    source, _ = tfds_source.open_tfds(f'{name}:{split}', data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    input_key, label_key = FEATURES[builder.name]
    reference = [(example[input_key], int(example[label_key])) for example in tfds.as_numpy(
        builder.as_dataset(split, shuffle_files=False,
                           read_config=tfds.ReadConfig(interleave_cycle_length=1)))]
    # Our reading order, put in file order (records are named by file and index).
    ours = [example for _, example in sorted(zip(names(source), decoded(source, channels)),
                                             key=lambda pair: pair[0])]
    assert len(reference) == source.info.num_examples > 0
    assert_examples_equal(ours, reference, channels)


def test_split_slices_read_the_right_records(data_dir, written):
    train_written = written['mnist']['train']
    paths = sorted(train_written)
    first_half, test = tfds_source.open_tfds('mnist:train[:50%]', data_dir)
    assert test is None and first_half.info.num_examples == 6
    assert first_half.info.spec == 'tfds:mnist:train[:50%]'
    assert sorted(names(first_half)) == [(paths[0], i) for i in range(4)] + [
        (paths[1], 0), (paths[1], 1)]
    assert_reads_as_written(first_half, train_written, channels=1)
    second_half, _ = tfds_source.open_tfds('mnist:train[50%:]', data_dir)
    assert second_half.info.num_examples == 6
    assert sorted(names(second_half)) == [(paths[1], 2), (paths[1], 3)] + [
        (paths[2], i) for i in range(4)]
    middle, _ = tfds_source.open_tfds('mnist:test[1:3]', data_dir)
    [test_path] = written['mnist']['test']
    assert middle.info.num_examples == 2 and names(middle) == [(test_path, 1), (test_path, 2)]


def test_explicit_version(data_dir, written):
    test, _ = tfds_source.open_tfds('mnist:3.0.1:test', data_dir)
    assert str(test.builder.version) == '3.0.1' and test.info.spec == 'tfds:mnist:test'
    [test_path] = written['mnist']['test']
    assert test.info.num_examples == 5 and names(test) == [(test_path, i) for i in range(5)]


def all_names(split_written):
    """(file path, index) of every record written in a split."""
    return [(path, index) for path, examples in sorted(split_written.items())
            for index in range(len(examples))]


def assert_disjoint_and_complete(parts, split_written):
    """The shards' records `parts` are each some, together all records of the split,
    none twice."""
    assert all(parts)
    assert sorted(name for part in parts for name in part) == all_names(split_written)


def test_sharding_by_file_when_there_are_enough_files(data_dir, written):
    train, _ = tfds_source.open_tfds('mnist:train', data_dir)
    paths = sorted(written['mnist']['train'])
    for count in (2, 3):
        parts = [names(train, Shard(index, count)) for index in range(count)]
        assert_disjoint_and_complete(parts, written['mnist']['train'])
        for index, part in enumerate(parts):
            assert {path for path, _ in part} == set(paths[index::count])
    assert_reads_as_written(train, written['mnist']['train'], channels=1, shard=Shard(1, 3))


def test_sharding_by_record_when_files_are_fewer_than_shards(data_dir, written):
    test, _ = tfds_source.open_tfds('mnist:test', data_dir)  # one file
    parts = [names(test, Shard(index, 2)) for index in range(2)]
    assert_disjoint_and_complete(parts, written['mnist']['test'])
    train, _ = tfds_source.open_tfds('mnist:train', data_dir)  # three files, four shards
    parts = [names(train, Shard(index, 4)) for index in range(4)]
    assert_disjoint_and_complete(parts, written['mnist']['train'])
    assert_reads_as_written(train, written['mnist']['train'], channels=1, shard=Shard(3, 4))


def png(pixels):
    return tf.io.encode_png(pixels).numpy()


@pytest.mark.parametrize('corrupt', [b'not an image', 'truncated png'])
def test_a_corrupt_image_is_named_by_the_guard_or_skipped_and_counted(tmp_path, corrupt):
    rng = np.random.default_rng(3)
    digits = [rng.integers(0, 256, (28, 28, 1), dtype=np.uint8) for _ in range(6)]
    if corrupt == 'truncated png':
        corrupt = png(digits[4])[:60]
    files = [[(digits[0], 0), (digits[1], 1), (digits[2], 2)],
             [(digits[3], 3), (corrupt, 4), (digits[5], 5)]]
    written = prepare(str(tmp_path), 'mnist', {'train': files})['train']
    bad_file = sorted(written)[1]
    train, _ = tfds_source.open_tfds('mnist:train', str(tmp_path), IMAGE)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        decoded(train, channels=1)
    assert bad_record_message(raised.value.message).startswith(
        f'bad record 1 of {bad_file} cannot be read')
    kept = decoded(train, channels=1, skip_bad_records=True)
    assert sorted(label for _, label in kept) == [0, 1, 2, 3, 5]
    for features, label in kept:
        np.testing.assert_array_equal(features[IMAGE_KEY], digits[label])
    counts = [int(features[BAD_RECORDS_KEY]) for features, _ in kept]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 1


def test_wrong_kind(data_dir):
    with pytest.raises(UserError,
                       match="dataset 'tfds:ucf101' holds clips but this model reads images"):
        tfds_source.open_tfds('ucf101', data_dir, IMAGE)
    with pytest.raises(UserError, match='holds images but this model reads clips'):
        tfds_source.open_tfds('mnist', data_dir, CLIP)


def test_unknown_split(data_dir):
    with pytest.raises(UserError, match="no split 'validation'.*train, test"):
        tfds_source.open_tfds('mnist:validation', data_dir)


def one_line_error(body, data_dir, kind=None):
    """The message of the UserError open_tfds raises, checked to be one line, and the
    seconds it took."""
    start = time.monotonic()
    with pytest.raises(UserError) as raised:
        tfds_source.open_tfds(body, data_dir, kind)
    message = str(raised.value)
    assert '\n' not in message
    return message, time.monotonic() - start


def test_unprepared_dataset_fails_at_once_saying_how_to_prepare(tmp_path, data_dir):
    message, seconds = one_line_error('mnist', str(tmp_path))
    assert seconds < 3  # GCS look-ups would take longer offline
    assert message.startswith(f'TFDS dataset mnist/3.0.1 is not prepared under {tmp_path}')
    assert '`tfds build mnist --data_dir=DIR`' in message
    message, _ = one_line_error('ucf101/ucf101_1:train', str(tmp_path), CLIP)
    assert 'tfds build ucf101 --config=ucf101_1 ' in message
    assert not os.listdir(tmp_path)  # nothing was downloaded or written
    # Where other datasets and configs are prepared, but not this one.
    message, seconds = one_line_error('ucf101/ucf101_3:train', data_dir, CLIP)
    assert seconds < 3 and 'ucf101/ucf101_3/2.0.0 is not prepared' in message


def test_unknown_dataset_config_or_version(tmp_path, data_dir):
    message, seconds = one_line_error('no_such_dataset', str(tmp_path))
    assert seconds < 3 and message.startswith("unknown TFDS dataset 'no_such_dataset'")
    message, seconds = one_line_error('ucf101/no_such_config', str(tmp_path))
    assert seconds < 3
    assert message.startswith('TFDS dataset ucf101:') and 'no_such_config' in message
    message, seconds = one_line_error('mnist:9.9.9', data_dir)  # 3.0.1 is prepared there
    assert seconds < 3 and message.startswith('TFDS dataset mnist:') and '9.9.9' in message


def test_dataset_without_class_label(data_dir):
    message, _ = one_line_error('binarized_mnist', data_dir)  # prepared, but no label
    assert message == ("TFDS dataset binarized_mnist has no image or video with a class label "
                       "named 'label' to learn from; its features: image (Image)")


@pytest.mark.parametrize('body, parsed', [
    ('mnist', ('mnist', None, None, None)),
    ('ucf101/ucf101_1:train', ('ucf101', 'ucf101_1', None, 'train')),
    ('mnist:3.0.1', ('mnist', None, '3.0.1', None)),
    ('mnist:3.0.1:test[:10]', ('mnist', None, '3.0.1', 'test[:10]')),
    ('cifar10:train[:10%]+test[50%:]', ('cifar10', None, None, 'train[:10%]+test[50%:]')),
])
def test_parse_body(body, parsed):
    assert tfds_source.parse_body(body) == parsed


def test_bad_spec():
    with pytest.raises(UserError, match='expected tfds:NAME'):
        tfds_source.parse_body(':train')


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv('TFDS_DATA_DIR', '/data/tfds')
    assert tfds_source.default_data_dir() == '/data/tfds'
    monkeypatch.delenv('TFDS_DATA_DIR')
    assert tfds_source.default_data_dir() == os.path.expanduser('~/tensorflow_datasets')
