"""The embedded datasets as TFDS builders: prepared once from the renderers, read back
through TfdsSource (tiny configs, in a temporary data dir)."""

import functools
import hashlib
import itertools
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from estimator_models.errors import UserError
from input_fns import BAD_RECORDS_KEY, CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY, LENGTH_KEY
from input_fns import embedded
from input_fns.embedded import glyphs, moving_glyphs
from input_fns.progress import Progress
from input_fns.sources import tfds_source
from input_fns.sources.source import Shard

TINY = embedded.EmbeddedConfig(name='tiny', train_examples=64, test_examples=32, num_shards=2)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds_data'))


@pytest.fixture(scope='module')
def digits(data_dir):
    return embedded.open_embedded('glyph_digits', data_dir, TINY)


@pytest.fixture(scope='module')
def clips(data_dir):
    return embedded.open_embedded('moving_glyphs', data_dir, TINY)


def decoded(source, shard=Shard()):
    """[(features, label)] of a whole source, as numpy."""
    examples = source.examples(1, source.info.num_classes, shard)
    return [({key: value.numpy() for key, value in features.items()}, int(label))
            for features, label in examples]


def test_digits_read_back_as_rendered(digits):
    train, test = digits
    assert train.info.kind == IMAGE and train.info.frame_shape == (28, 28, 1)
    assert train.info.class_names == glyphs.CLASS_NAMES and train.info.num_classes == 10
    assert (train.info.num_examples, test.info.num_examples) == (64, 32)
    examples = decoded(train)
    assert len(examples) == 64
    for features, label in examples:
        assert features[IMAGE_KEY].shape == (28, 28, 1) and features[IMAGE_KEY].dtype == np.uint8
        assert 0 <= label < 10 and features[BAD_RECORDS_KEY] == 0
    # TFDS stores them shuffled: compare as sets of (pixels, label).
    images, labels = glyphs.render_digits(64, [embedded.SPLIT_SEEDS['train'], 0])
    assert (sorted((f[IMAGE_KEY][..., 0].tobytes(), label) for f, label in examples)
            == sorted((image.tobytes(), int(label)) for image, label in zip(images, labels)))


def test_digit_splits_differ(digits):
    train, test = digits
    train_images = {f[IMAGE_KEY].tobytes() for f, _ in decoded(train)}
    test_images = {f[IMAGE_KEY].tobytes() for f, _ in decoded(test)}
    assert len(test_images) == 32 and not train_images & test_images


def test_clips_keep_their_true_lengths(clips):
    train, test = clips
    assert train.info.kind == CLIP and train.info.frame_shape == (32, 32, 1)
    assert train.info.class_names == moving_glyphs.CLASS_NAMES
    examples = decoded(test)
    assert len(examples) == 32
    lengths = [int(f[LENGTH_KEY]) for f, _ in examples]
    assert min(lengths) >= moving_glyphs.MIN_FRAMES and max(lengths) <= moving_glyphs.MAX_FRAMES
    assert len(set(lengths)) > 1
    for features, label in examples:
        assert features[FRAMES_KEY].shape == (features[LENGTH_KEY], 32, 32, 1)
        assert 0 <= label < 8
    frames, rendered_lengths, labels = moving_glyphs.render_clips(
        32, [embedded.SPLIT_SEEDS['test'], 0])
    assert (sorted((f[FRAMES_KEY][..., 0].tobytes(), label) for f, label in examples)
            == sorted((clip[:length].tobytes(), int(label))
                      for clip, length, label in zip(frames, rendered_lengths, labels)))


def test_preparing_twice_reuses_the_data(digits, data_dir, capfd):
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(data_dir)
                   for name in names)
    before = {path: os.stat(path).st_mtime_ns for path in files}
    capfd.readouterr()
    train, _ = embedded.open_embedded('glyph_digits', data_dir, TINY)
    assert 'preparing' not in capfd.readouterr().err
    assert {path: os.stat(path).st_mtime_ns for path in files} == before
    assert train.info.num_examples == 64


def test_first_preparation_says_what_it_does_and_how_long_it_took(tmp_path, capfd):
    config = embedded.EmbeddedConfig(name='few', train_examples=4, test_examples=2)
    embedded.open_embedded('moving_glyphs', str(tmp_path), config)
    captured = capfd.readouterr()
    assert captured.out == ''
    header, last = captured.err.strip().splitlines()
    assert header == (f'preparing embedded dataset moving_glyphs into {tmp_path}/moving_glyphs/few/'
                      f'{embedded.VERSION} (6 examples)')
    assert re.fullmatch(r'\[#{30}\] 100%  6/6 examples  [0-9.]+ examples/s  took \d+s', last)


def test_preparation_logs_its_progress_in_plain_lines(tmp_path, capfd, monkeypatch):
    seconds = itertools.count(0.0, 2.0)  # each look at the clock, two seconds later
    monkeypatch.setattr(embedded, 'Progress', functools.partial(Progress, clock=seconds.__next__))
    monkeypatch.setattr(embedded.GlyphDigits, 'RENDER_CHUNK', 100)
    config = embedded.EmbeddedConfig(name='logged', train_examples=300, test_examples=100)
    embedded.open_embedded('glyph_digits', str(tmp_path), config)
    lines = capfd.readouterr().err.splitlines(keepends=True)
    assert all('\r' not in line for line in lines)
    assert [line for line in lines if 'examples/s' in line] == [
        f'[{"#" * 7}{"-" * 23}]  25%  100/400 examples  50.0 examples/s  ETA 6s\n',
        f'[{"#" * 15}{"-" * 15}]  50%  200/400 examples  50.0 examples/s  ETA 4s\n',
        f'[{"#" * 22}{"-" * 8}]  75%  300/400 examples  50.0 examples/s  ETA 2s\n',
        f'[{"#" * 30}] 100%  400/400 examples  40.0 examples/s  took 10s\n']


# sha256 of what the renderers make of these seeds: the data of every prepared copy of a
# VERSION, so no change to how it is made may alter a bit of it.
RENDERED_DIGITS = '1eab268ee51c9958d492b65703959f493ec1ae39b535ce8f46d95dbfacb18e66'
RENDERED_CLIPS = '2cac2b7881648e0ebd0310c629538c162a3a8841738d923e2db9d7f513d77adb'


def sha256(arrays):
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def test_rendering_is_unchanged():
    assert sha256(glyphs.render_digits(200, [embedded.SPLIT_SEEDS['train'], 0])) == RENDERED_DIGITS
    assert sha256(moving_glyphs.render_clips(24, [embedded.SPLIT_SEEDS['test'], 0],
                                             with_frame_labels=True)) == RENDERED_CLIPS


RACER = textwrap.dedent('''
    import os, sys, time
    from input_fns import embedded
    from input_fns.sources.source import Shard
    data_dir = sys.argv[1]
    # Start preparing together: each waits, TensorFlow imported, until both are ready.
    open(os.path.join(data_dir, f'ready-{os.getpid()}'), 'w').close()
    while sum(name.startswith('ready-') for name in os.listdir(data_dir)) < 2:
        time.sleep(0.01)
    config = embedded.EmbeddedConfig(name='raced', train_examples=500, test_examples=8)
    train, _ = embedded.open_embedded('glyph_digits', data_dir, config)
    print(train.info.num_examples, sum(1 for _ in train.records(Shard(), None)))
''')


def test_processes_racing_to_prepare_both_read_one_copy(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    racers = [subprocess.Popen([sys.executable, '-c', RACER, str(tmp_path)], text=True, cwd=repo,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for _ in range(2)]
    results = [racer.communicate(timeout=300) + (racer.returncode,) for racer in racers]
    for out, err, returncode in results:
        assert returncode == 0, err[-2000:]
        assert out.split() == ['500', '500']
        assert 'preparing embedded dataset glyph_digits' in err  # both wrote, one renamed
    assert os.listdir(tmp_path / 'glyph_digits' / 'raced') == [str(embedded.VERSION)]


def test_tfds_spec_reads_the_same_data(digits, data_dir):
    # `tiny` is no registered config: TFDS reads it from its files (read_only_builder).
    train, test = tfds_source.open_tfds('glyph_digits/tiny', data_dir, IMAGE)
    assert train.info.spec == 'tfds:glyph_digits/tiny:train'
    assert sorted(f[IMAGE_KEY].tobytes() for f, _ in decoded(test)) == sorted(
        f[IMAGE_KEY].tobytes() for f, _ in decoded(digits[1]))


def test_sharding_by_file_and_by_record_covers_every_example_once(digits):
    train, _ = digits
    everything = sorted(f[IMAGE_KEY].tobytes() for f, _ in decoded(train))
    for count in (2, 3):  # 2: one file each; 3: more shards than the 2 files
        parts = [[f[IMAGE_KEY].tobytes() for f, _ in decoded(train, Shard(index, count))]
                 for index in range(count)]
        assert all(parts)
        assert sorted(sum(parts, [])) == everything


def test_records_are_named_by_file_and_index_in_any_order(digits):
    train, _ = digits

    def names(seed):
        return [(origin.numpy().decode(), int(index))
                for origin, index, _ in train.records(Shard(), seed)]

    unshuffled = names(None)
    assert len(set(unshuffled)) == 64
    assert {os.path.basename(origin) for origin, _ in unshuffled} == {
        f'glyph_digits-train.tfrecord-0000{i}-of-00002' for i in range(2)}
    assert names(1) == names(1) and sorted(names(1)) == sorted(unshuffled)


def test_unknown_embedded_dataset():
    with pytest.raises(UserError, match='unknown embedded dataset'):
        embedded.builder('glyph_letters')


def test_configs():
    full, small = (embedded.GlyphDigits.builder_configs[name] for name in ('full', 'small'))
    assert (full.train_examples, full.test_examples) == (60000, 10000)
    assert (small.train_examples, small.test_examples) == (6000, 1000)
    assert small.train_examples % embedded.GlyphDigits.RENDER_CHUNK == 0
    clips = embedded.MovingGlyphs.builder_configs['small']
    assert (clips.train_examples, clips.test_examples) == (1200, 200)
    assert embedded.EMBEDDED_KINDS == {'glyph_digits': IMAGE, 'moving_glyphs': CLIP}
