"""Data specs: every form of the same examples gives the same batches, and every model
trains from every form."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import TINY
from estimator_models.errors import UserError
from estimator_models.running import experiment
from input_fns import FRAMES_KEY, IMAGE_KEY, LENGTH_KEY, dataset, specs, writing
from input_fns.embedded import glyphs, moving_glyphs

ModeKeys = tf.estimator.ModeKeys
NUM_DIGITS, NUM_CLIPS = 40, 24


class SameExamples(tfds.core.GeneratorBasedBuilder):
    """A TFDS builder holding the arrays of an .npz file (its config's description)."""

    VERSION = tfds.core.Version('1.0.0')
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='digits'), tfds.core.BuilderConfig(name='clips')]

    def _info(self):
        if self.builder_config.name == 'clips':
            features = {'video': tfds.features.Video(shape=(None, 32, 32, 1)),
                        'label': tfds.features.ClassLabel(num_classes=8)}
        else:
            features = {'image': tfds.features.Image(shape=(28, 28, 1)),
                        'label': tfds.features.ClassLabel(num_classes=10)}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples()}

    def _generate_examples(self):
        path = os.environ['SAME_EXAMPLES_NPZ_' + self.builder_config.name.upper()]
        saved = np.load(path, allow_pickle=False)
        lengths = saved['lengths'] if 'lengths' in saved else [None] * len(saved['y'])
        key = 'video' if self.builder_config.name == 'clips' else 'image'
        for index, (pixels, label, length) in enumerate(zip(saved['x'], saved['y'], lengths)):
            pixels = pixels[..., None] if length is None else pixels[:length, ..., None]
            yield index, {key: pixels, 'label': label}


def _write_forms(tmp_path, name, pixels, labels, lengths=None):
    """The same examples as .npz, TFRecord, class folders and a prepared TFDS builder:
    {form: spec}."""
    npz_path = str(tmp_path / f'{name}.npz')
    np.savez(npz_path, x=pixels, y=labels, **({} if lengths is None else {'lengths': lengths}))
    forms = {'npz': npz_path}
    train, _ = specs.open_splits(npz_path)
    writing.source_to_tfrecords(train, str(tmp_path / name), shards=3, progress=False)
    forms['tfrecord'] = str(tmp_path / f'{name}.tfrecord*')
    folder = tmp_path / f'{name}_folders'
    for index, label in enumerate(labels):
        if lengths is None:
            os.makedirs(folder / str(label), exist_ok=True)
            tf.io.write_file(str(folder / str(label) / f'{index}.png'), tf.io.encode_png(pixels[index][..., None]))
            continue
        clip = folder / str(label) / f'clip_{index}'
        os.makedirs(clip)
        for frame in range(lengths[index]):
            tf.io.write_file(str(clip / f'frame_{frame}.png'), tf.io.encode_png(pixels[index, frame][..., None]))
    forms['folder'] = str(folder) + '/'
    os.environ['SAME_EXAMPLES_NPZ_' + name.upper()] = npz_path
    builder = SameExamples(config=name, data_dir=str(tmp_path / 'tfds'))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    forms['tfds'] = f'tfds:same_examples/{name}:train'
    return forms, str(tmp_path / 'tfds')


@pytest.fixture(scope='module')
def digit_forms(tmp_path_factory):
    images, labels = glyphs.render_digits(NUM_DIGITS, seed=11)
    labels[:10] = np.arange(10)  # every class present: class folders then match labels
    return _write_forms(tmp_path_factory.mktemp('digit_forms'), 'digits', images, labels)


@pytest.fixture(scope='module')
def clip_forms(tmp_path_factory):
    frames, lengths, labels = moving_glyphs.render_clips(NUM_CLIPS, seed=11)
    lengths[:10] = np.arange(3, 13)[:10]  # 3 to 12 frames
    labels[:8] = np.arange(8)
    for clip, length in zip(frames, lengths):
        clip[length:] = 0
    return _write_forms(tmp_path_factory.mktemp('clip_forms'), 'clips', frames, labels, lengths)


def _sorted_examples(spec, data_dir, kind, hparams):
    """Every example of the eval-mode batches of `spec`, as sorted (label, length, pixels)."""
    data, _ = specs.open_splits(spec, kind, data_dir)
    input_fn = dataset.make_input_fn(data, ModeKeys.EVAL, hparams, batch_size=8)
    examples = []
    for features, labels in input_fn().as_numpy_iterator():
        for row, label in enumerate(labels):
            if kind == 'clip':
                length = features[LENGTH_KEY][row]
                examples.append((label, length, features[FRAMES_KEY][row, :length].tobytes()))
                assert not features[FRAMES_KEY][row, length:].any()
            else:
                examples.append((label, 0, features[IMAGE_KEY][row].tobytes()))
    return sorted(examples)


@pytest.mark.parametrize('kind', ['image', 'clip'])
def test_every_form_of_the_same_examples_gives_the_same_batches(kind, digit_forms, clip_forms):
    forms, data_dir = digit_forms if kind == 'image' else clip_forms
    size = (28, 10) if kind == 'image' else (32, 8)
    hparams = {'height': size[0], 'width': size[0], 'channels': 1, 'num_classes': size[1],
               'resize': 'resize', 'shuffle_buffer': 100}
    reference = _sorted_examples(forms['npz'], data_dir, kind, hparams)
    assert len(reference) == (NUM_DIGITS if kind == 'image' else NUM_CLIPS)
    if kind == 'clip':
        assert {length for _, length, _ in reference} >= set(range(3, 13))
    for form in ('tfrecord', 'folder', 'tfds'):
        assert _sorted_examples(forms[form], data_dir, kind, hparams) == reference, form


@pytest.mark.parametrize('model', ['pixel_row_lstm', 'cnn_lstm', 'temporal_cnn_lstm'])
@pytest.mark.parametrize('form', ['npz', 'tfrecord', 'folder', 'tfds'])
def test_every_model_trains_from_every_form(model, form, digit_forms, clip_forms, tmp_path):
    forms, data_dir = clip_forms if model == 'temporal_cnn_lstm' else digit_forms
    run, train_source, eval_source = experiment.prepare_training(
        model, str(tmp_path), forms[form], None, dict(TINY[model], batch_size='8'), data_dir)
    estimator = experiment.make_estimator(run, experiment.run_config(str(tmp_path), 1, 3), train_steps=3)
    estimator.train(run.input_fn(train_source, ModeKeys.TRAIN, seed=1), max_steps=3)
    result = estimator.evaluate(run.input_fn(eval_source, ModeKeys.EVAL))
    assert result['global_step'] == 3 and np.isfinite(result['loss'])
    assert result['num_examples'] > 0


def test_a_single_split_source_holds_out_a_fixed_tenth(digits_npz):
    train, held_out = specs.train_and_eval_sources(digits_npz, None, 'image', None)
    hparams = {'height': 28, 'width': 28, 'channels': 1, 'num_classes': 10, 'resize': 'resize'}

    def images(data):
        batches = dataset.make_input_fn(data, ModeKeys.EVAL, hparams, 100)().as_numpy_iterator()
        return [image.tobytes() for features, _ in batches for image in features[IMAGE_KEY]]

    train_images, held_out_images = images(train), images(held_out)
    assert len(train_images) + len(held_out_images) == 600
    assert 30 <= len(held_out_images) <= 90
    assert not set(train_images) & set(held_out_images)
    assert images(specs.train_and_eval_sources(digits_npz, None, 'image', None)[1]) == held_out_images


def test_unknown_and_mismatched_specs_are_named_errors(tmp_path):
    with pytest.raises(UserError, match='unknown data spec'):
        specs.open_splits('no_such_dataset', 'image')
    with pytest.raises(UserError, match='holds clips but this model reads images'):
        specs.open_splits('moving_glyphs', 'image')
    with pytest.raises(UserError, match='no TFRecord files match'):
        specs.open_splits(str(tmp_path / 'nothing.tfrecord*'), 'image')
    with pytest.raises(UserError, match='does not exist'):
        specs.open_splits(str(tmp_path / 'missing') + '/', 'image')
