"""The embedded datasets: TFDS builders that render their examples locally, never downloading,
from the generators of this package's modules.

  glyph_digits   images uint8 [28, 28, 1], 10 classes (glyphs.CLASS_NAMES)
  moving_glyphs  clips uint8 [T, 32, 32, 1], T = 6..12 (only the clip's true frames
                 are stored), 8 classes (moving_glyphs.CLASS_NAMES)

Each has the config `full` (the default: 60,000 / 10,000 digits, 12,000 / 2,000 clips),
`small` (a tenth of it) and any `EmbeddedConfig` a caller makes (tests use tiny ones).
Examples are rendered RENDER_CHUNK at a time (1000 digits, 200 clips), chunk i of a split
from the seed (split seed, i), split seeds train 1 and test 2: a config whose sizes are
multiples of the chunk holds the first examples of any larger one (`small` those of
`full`). TFDS writes them shuffled into `num_shards` files per split.

Importing this package registers the builders with TFDS, so `tfds:glyph_digits/small`
names the same data as `open_embedded('glyph_digits', config='small')`. Both read it
through tfds_source.TfdsSource.
"""

import abc
import contextlib
import dataclasses
import io
import sys
import threading

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from estimator_models.errors import UserError
from input_fns import CLIP, IMAGE
from input_fns.embedded import glyphs, moving_glyphs
from input_fns.progress import Progress
from input_fns.sources import tfds_source

VERSION = tfds.core.Version('3.0.0')
RELEASE_NOTES = {
    '2.0.0': 'Built by TFDS as PNG-encoded TFRecords (was a cached .npz); rendered in '
             'seeded chunks; clips store only their true frames.',
    '2.1.0': 'moving_glyphs: frame_labels, a class per frame (has the glyph wrapped around a '
             'border yet); the same frames and clip labels as 2.0.0.',
    '3.0.0': 'glyph_digits: handwriting-like variation (pen pressure along strokes, breaks, '
             'blobs, overshooting and short strokes, a curving slant, scan blur and contrast); '
             'ink statistics near MNIST\'s. moving_glyphs: the same clips as 2.1.0.',
}
SPLIT_SEEDS = {'train': 1, 'test': 2}
_ENCODE_BATCH = 64
# prepare() redirects the process's stdout, so threads must not prepare at once.
_PREPARING = threading.Lock()


@dataclasses.dataclass(eq=False)
class EmbeddedConfig(tfds.core.BuilderConfig):
    """How many examples each split gets, and in how many files it is written."""
    train_examples: int = 0
    test_examples: int = 0
    num_shards: int = 1

    def __post_init__(self):
        # TFDS cannot write a split into more files than it has examples.
        if min(self.train_examples, self.test_examples) < self.num_shards:
            raise ValueError(f'EmbeddedConfig {self.name}: each split needs at least '
                             f'num_shards={self.num_shards} examples')

    def split_sizes(self):
        return {'train': self.train_examples, 'test': self.test_examples}

    def num_examples(self):
        return self.train_examples + self.test_examples


class _EmbeddedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder whose examples are rendered from SPLIT_SEEDS, RENDER_CHUNK at a time."""

    VERSION = VERSION
    RELEASE_NOTES = RELEASE_NOTES
    INPUT_KEY: str  # 'image' or 'video', beside 'label'
    RENDER_CHUNK: int  # examples rendered at once
    _rendering: Progress  # of all splits, while _download_and_prepare runs

    @abc.abstractmethod
    def _features(self):
        """The tfds.features.FeaturesDict of one example: {INPUT_KEY, 'label'}."""

    @abc.abstractmethod
    def _chunk_examples(self, count, seed):
        """A list of `count` examples (feature dicts) rendered from `seed`."""

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, description=type(self).__doc__,
                                     features=self._features(),
                                     supervised_keys=(self.INPUT_KEY, 'label'))

    def _download_and_prepare(self, dl_manager, download_config):
        # One progress line over the splits TFDS generates one after the other; its
        # last line comes once they are written.
        with Progress(self.builder_config.num_examples()) as self._rendering:
            super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is rendered here
        return {split: self._generate_examples(SPLIT_SEEDS[split], size)
                for split, size in self.builder_config.split_sizes().items()}

    def _generate_examples(self, split_seed, num_examples):
        """(index, example) for the split's examples, index 0..num_examples-1."""
        for start in range(0, num_examples, self.RENDER_CHUNK):
            count = min(self.RENDER_CHUNK, num_examples - start)
            chunk_seed = [split_seed, start // self.RENDER_CHUNK]
            yield from enumerate(self._chunk_examples(count, chunk_seed), start)
            self._rendering.advance(count)


def _configs(train, test, num_shards):
    """The `full` and `small` configs of a dataset with `train` and `test` examples."""
    return [
        EmbeddedConfig(name='full', description='the full dataset', train_examples=train,
                       test_examples=test, num_shards=num_shards),
        EmbeddedConfig(name='small', description='a tenth of the full dataset, for quick runs',
                       train_examples=train // 10, test_examples=test // 10),
    ]


class GlyphDigits(_EmbeddedBuilder):
    """Handwriting-like digits, 28x28 grayscale, drawn like MNIST (input_fns.embedded.glyphs)."""

    BUILDER_CONFIGS = _configs(60000, 10000, num_shards=4)
    INPUT_KEY = 'image'
    RENDER_CHUNK = 1000

    def _features(self):
        return tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),
            'label': tfds.features.ClassLabel(names=glyphs.CLASS_NAMES),
        })

    def _chunk_examples(self, count, seed):
        images, labels = glyphs.render_digits(count, seed)
        encoded = encode_pngs(images[..., None])
        return [{'image': image, 'label': label} for image, label in zip(encoded, labels)]


class MovingGlyphs(_EmbeddedBuilder):
    """Clips of a glyph moving in one of 8 directions, 32x32 grayscale (input_fns.embedded.moving_glyphs)."""

    BUILDER_CONFIGS = _configs(12000, 2000, num_shards=4)
    INPUT_KEY = 'video'
    RENDER_CHUNK = 200

    def _features(self):
        size = moving_glyphs.CANVAS_SIZE
        return tfds.features.FeaturesDict({
            'video': tfds.features.Video(shape=(None, size, size, 1)),
            'label': tfds.features.ClassLabel(names=moving_glyphs.CLASS_NAMES),
            'frame_labels': tfds.features.Sequence(
                tfds.features.ClassLabel(names=moving_glyphs.FRAME_CLASS_NAMES)),
        })

    def _chunk_examples(self, count, seed):
        frames, lengths, labels, frame_labels = moving_glyphs.render_clips(count, seed, with_frame_labels=True)
        # Only the true frames: the zeros past a clip's length are padding, not data.
        true_frames = [clip[:length, ..., None] for clip, length in zip(frames, lengths)]
        encoded = encode_pngs(np.concatenate(true_frames))
        ends = np.cumsum(lengths)
        return [{'video': list(encoded[end - length:end]), 'label': label,
                 'frame_labels': clip_frame_labels[:length]}
                for end, length, label, clip_frame_labels in zip(ends, lengths, labels, frame_labels)]


@dataclasses.dataclass(frozen=True)
class EmbeddedDataset:
    """What callers know of an embedded dataset without preparing it."""
    kind: str
    builder_class: type


EMBEDDED = {
    'glyph_digits': EmbeddedDataset(IMAGE, GlyphDigits),
    'moving_glyphs': EmbeddedDataset(CLIP, MovingGlyphs),
}
EMBEDDED_KINDS = {name: dataset.kind for name, dataset in EMBEDDED.items()}


def encode_pngs(pixels):
    """uint8 [N, H, W, C] -> string [N] of PNG encodings (numpy).

    tfds.features.Image stores bytes as given. TFDS would encode each image in its own
    session run (115 us for a 32x32 frame here); one tf.data pass encoding batches in
    parallel takes a third of that.
    """
    batches = tf.data.Dataset.from_tensor_slices(pixels).batch(_ENCODE_BATCH)
    encoded = batches.map(
        lambda batch: tf.map_fn(tf.io.encode_png, batch, fn_output_signature=tf.string),
        num_parallel_calls=tf.data.AUTOTUNE)
    return encoded.unbatch().batch(len(pixels)).get_single_element().numpy()


def builder(name, data_dir=None, config=None):
    """The TFDS builder of embedded dataset `name` under `data_dir` (default
    tfds_source.default_data_dir()), prepared or not.

    Args:
      config: a config name ('full', 'small'), an EmbeddedConfig, or None for 'full'.
    """
    if name not in EMBEDDED:
        raise UserError(f'unknown embedded dataset {name!r}; choose one of {sorted(EMBEDDED)}')
    return EMBEDDED[name].builder_class(config=config,
                                        data_dir=data_dir or tfds_source.default_data_dir())


def prepare(unprepared):
    """Renders and writes an embedded builder's data unless it is there; returns a builder
    that reads it. Says so on stderr, where the rendering then shows its progress.

    Safe when processes race: each writes into its own temporary directory that TFDS
    renames into place (py_utils.incomplete_dir); a process whose rename loses reads the
    winner's data. Threads of one process take turns.
    """
    with _PREPARING:
        if unprepared.is_prepared():
            return unprepared
        config = unprepared.builder_config
        print(f'preparing embedded dataset {unprepared.name} into {unprepared.data_dir} '
              f'({config.num_examples()} examples)', file=sys.stderr, flush=True)
        offline = tfds.download.DownloadConfig(try_download_gcs=False,
                                               num_shards=config.num_shards)
        try:
            with _quiet_tfds():
                unprepared.download_and_prepare(download_config=offline)
        except FileExistsError:
            # What the loser of a race gets when it renames its directory into place.
            if not unprepared.is_prepared():
                raise
    # A fresh builder reads the written dataset_info, whoever wrote it.
    return type(unprepared)(config=config, data_dir=unprepared.data_dir_root)


@contextlib.contextmanager
def _quiet_tfds():
    """Silences TFDS while it prepares: it prints its own banner to stdout, which belongs
    to the program (bin/evaluate prints JSON there), and progress bars to stderr."""
    tfds.disable_progress_bar()  # for good: nothing here wants TFDS's bars
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def open_embedded(name, data_dir=None, config=None):
    """(train TfdsSource, test TfdsSource) of an embedded dataset, prepared on first use.

    Args: as `builder`.
    """
    prepared = prepare(builder(name, data_dir, config))
    config_name = prepared.builder_config.name
    spec = name if config_name == 'full' else f'{name}/{config_name}'
    return tfds_source.sources_of(prepared, spec)
