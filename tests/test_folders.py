"""Class folders of images and clips as a streaming Source (input_fns.sources.folders)."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

from estimator_models.errors import UserError
from input_fns import BAD_RECORDS_KEY, CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY, LENGTH_KEY
from input_fns.sources import folders
from input_fns.sources.source import Shard

# Class folders in unsorted order, so labels must come from sorting, not creation.
IMAGES = {  # class -> [(file name, value of every pixel, (height, width))]
    'zebra': [('b.png', 10, (6, 7)), ('a.JPG', 100, (8, 8))],
    'ant': [('img_10.png', 30, (5, 5)), ('img_2.png', 20, (3, 9)), ('x.jpeg', 200, (16, 8))],
    'moth': [('one.PNG', 40, (4, 4))],
}
CLIPS = {  # class -> {clip name: frames}
    'right': {'c1': 12, 'c2': 3},
    'left': {'c10': 5, 'c2': 10},
}


def write(path, pixels):
    """Writes uint8 [h, w, c] pixels as PNG, or JPEG by the file's extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    jpeg = path.lower().endswith(('.jpg', '.jpeg'))
    encoded = tf.io.encode_jpeg(pixels, quality=100) if jpeg else tf.io.encode_png(pixels)
    tf.io.write_file(path, encoded)


def fill(value, size, channels):
    return np.full(size + (channels,), value, np.uint8)


@pytest.fixture
def image_dir(tmp_path):
    for name, images in IMAGES.items():
        for position, (file_name, value, size) in enumerate(images):
            # Mixed channel counts: channels=1 must convert them all.
            write(str(tmp_path / name / file_name), fill(value, size, 3 if position % 2 else 1))
    # Not examples: hidden files, other extensions, and a stray file next to the classes.
    write(str(tmp_path / 'ant' / '.hidden.png'), fill(0, (2, 2), 1))
    (tmp_path / 'ant' / 'notes.txt').write_text('not an image')
    (tmp_path / 'README').write_text('not a class')
    os.makedirs(tmp_path / '.cache')
    return str(tmp_path)


def write_clip(folder, num_frames, size=(4, 6)):
    """Frames frame_1 ... frame_N whose pixels equal their frame number."""
    for number in range(1, num_frames + 1):
        write(os.path.join(folder, f'frame_{number}.png'), fill(number, size, 1))


@pytest.fixture
def clip_dir(tmp_path):
    for name, clips in CLIPS.items():
        for clip, num_frames in clips.items():
            write_clip(str(tmp_path / name / clip), num_frames)
    return str(tmp_path)


def names_bad_record(origin):
    """A pattern for the guard's message about `origin` (which it may quote)."""
    return rf'bad record 0 of \W*{re.escape(origin)}\W'


def read_all(folder, channels=1, **kwargs):
    examples = folder.examples(channels=channels, num_classes=folder.info.num_classes, **kwargs)
    return [(features, int(label)) for features, label in examples]


def test_images_follow_sorted_class_names(image_dir):
    folder, test = folders.open_folder(image_dir, IMAGE)
    assert test is None
    info = folder.info
    assert (info.kind, info.class_names, info.num_classes, info.num_examples, info.frame_shape) == (
        IMAGE, ('ant', 'moth', 'zebra'), 3, 6, None)
    assert folder.first_frame_shape() == (3, 9, 3)  # ant/img_2.png, in natural order
    expected = [(label, value, size) for label, name in enumerate(info.class_names)
                for _, value, size in sorted(IMAGES[name], key=lambda image:
                                             folders.natural_key(image[0]))]
    read = read_all(folder)
    assert [label for _, label in read] == [label for label, _, _ in expected]
    for (features, _), (_, value, size) in zip(read, expected):
        image = features[IMAGE_KEY].numpy()
        assert image.shape == size + (1,)
        assert abs(image.astype(int) - value).max() <= 2  # JPEG may be off by a little
        assert features[BAD_RECORDS_KEY].numpy() == 0


def test_clips_have_frames_in_natural_order(clip_dir):
    folder, _ = folders.open_folder(clip_dir)
    assert (folder.info.kind, folder.info.class_names, folder.info.num_examples) == (
        CLIP, ('left', 'right'), 4)
    assert folder.first_frame_shape() == (4, 6, 1)
    lengths = [(label, int(features[LENGTH_KEY])) for features, label in read_all(folder)]
    assert lengths == [(0, 10), (0, 5), (1, 12), (1, 3)]  # left/c2 before left/c10
    for features, _ in read_all(folder):
        frames = features[FRAMES_KEY].numpy()
        assert frames.shape == (features[LENGTH_KEY], 4, 6, 1)
        assert frames[:, 0, 0, 0].tolist() == list(range(1, len(frames) + 1))


def test_natural_key():
    names = ['frame_10.png', 'frame_2.png', 'frame_1.png', 'a', 'frame_02.png', '10']
    assert sorted(names, key=folders.natural_key) == [
        '10', 'a', 'frame_1.png', 'frame_02.png', 'frame_2.png', 'frame_10.png']


def test_shard_and_shuffle(image_dir):
    folder, _ = folders.open_folder(image_dir)
    origins = folder.origins

    def read_origins(shard=Shard(), shuffle_seed=None, passes=1):
        records = folder.records(shard, shuffle_seed).repeat(passes)
        return [origin.numpy().decode() for origin, _, _ in records]

    assert read_origins() == origins
    assert read_origins(Shard(1, 2)) == origins[1::2]
    shuffled = read_origins(shuffle_seed=3, passes=2)
    assert shuffled == read_origins(shuffle_seed=3, passes=2)
    assert sorted(shuffled[:6]) == sorted(shuffled[6:]) == sorted(origins)
    assert shuffled != origins * 2


def test_kind_mismatch(clip_dir):
    with pytest.raises(UserError, match=f'^{clip_dir} holds clips but this model reads images$'):
        folders.open_folder(clip_dir, IMAGE)


@pytest.mark.parametrize('layout, message', [
    ({}, 'has 0 class folder'),
    ({'cat/a.png': 1}, 'has 1 class folder'),
    ({'cat/notes.txt': 0, 'dog/': 0}, 'holds no images'),
    ({'cat/a.png': 1, 'dog/notes.txt': 0}, 'class folder .*dog holds no images'),
    ({'cat/c1/frame_1.png': 1, 'dog/c1/': 0}, 'clip folder .*dog/c1 holds no frames'),
    ({'cat/a.png': 1, 'cat/c1/frame_1.png': 1, 'dog/b.png': 1}, 'cat holds both images and'),
    ({'cat/a.png': 1, 'dog/c1/frame_1.png': 1}, 'mixes class folders of images and of clips'),
])
def test_unusable_folders(tmp_path, layout, message):
    for path, value in layout.items():
        full = str(tmp_path / path)
        if path.endswith('/'):
            os.makedirs(full)
        elif path.endswith('.png'):
            write(full, fill(value, (2, 2), 1))
        else:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            open(full, 'w').close()
    with pytest.raises(UserError, match=message) as raised:
        folders.open_folder(str(tmp_path))
    assert '\n' not in str(raised.value)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        folders.open_folder(str(tmp_path / 'nowhere'))
    (tmp_path / 'file.png').write_bytes(b'')
    with pytest.raises(UserError, match='is not a folder'):
        folders.open_folder(str(tmp_path / 'file.png'))


def assert_one_dropped(read):
    """The count of dropped records (the guard's, which may reach an example one early)
    goes from 0 to 1 and ends at 1."""
    counts = [int(features[BAD_RECORDS_KEY]) for features, _ in read]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 1


def test_corrupt_image_is_a_bad_record(image_dir):
    corrupt = os.path.join(image_dir, 'moth', 'broken.png')
    with open(corrupt, 'wb') as file:
        file.write(b'\x89PNG\r\n\x1a\n truncated')
    folder, _ = folders.open_folder(image_dir)
    with pytest.raises(tf.errors.InvalidArgumentError, match=names_bad_record(corrupt)):
        read_all(folder)
    read = read_all(folder, skip_bad_records=True)
    assert len(read) == folder.info.num_examples - 1
    assert_one_dropped(read)


def test_clip_with_frames_of_different_sizes_is_a_bad_record(clip_dir):
    clip = os.path.join(clip_dir, 'right', 'c1')
    write(os.path.join(clip, 'frame_7.png'), fill(7, (5, 5), 1))
    folder, _ = folders.open_folder(clip_dir)
    with pytest.raises(tf.errors.InvalidArgumentError, match=names_bad_record(clip)):
        read_all(folder)
    read = read_all(folder, skip_bad_records=True)
    assert [int(features[LENGTH_KEY]) for features, _ in read] == [10, 5, 3]
    assert_one_dropped(read)


def test_first_frame_shape_of_an_unreadable_image(tmp_path):
    for name in ('cat', 'dog'):
        os.makedirs(tmp_path / name)
        (tmp_path / name / 'a.png').write_bytes(b'no png')
    folder, _ = folders.open_folder(str(tmp_path))
    with pytest.raises(UserError, match=r'cannot decode .*cat/a\.png: ') as raised:
        folder.first_frame_shape()
    assert '\n' not in str(raised.value)
