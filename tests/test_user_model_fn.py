"""A user's own TF1 model_fn, run by name (`--model=package.module:function`) through the
whole pipeline: the examples/ model_fns train, evaluate and export unchanged, and their
exports answer bin/predict as Estimator.predict does."""

import json
import os
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, held_out_arrays, run_cli
from estimator_models import registry
from estimator_models.errors import UserError
from estimator_models.legacy import user_model_fn
from estimator_models.running import experiment, hparams

EXAMPLES = {
    'image': ('examples.legacy_pixel_rnn:model_fn', 'rnn_units=16,batch_size=32'),
    'clip': ('examples.legacy_clip_rnn:model_fn', 'rnn_units=16,frame_units=16,batch_size=16'),
}
ALL_SIGNATURES = {
    'image': {'serving_default', 'predict_bytes', 'classification'},
    'clip': {'serving_default', 'predict_with_lengths', 'predict_bytes', 'classification'},
}


@pytest.fixture(scope='module', params=['image', 'clip'])
def example_run(request, tmp_path_factory, digits_npz, clips_npz):
    """(kind, model_dir, bin/train's stdout) of an examples/ model_fn trained by bin/train."""
    kind = request.param
    model, small = EXAMPLES[kind]
    model_dir = str(tmp_path_factory.mktemp('user_model') / kind)
    data = digits_npz if kind == 'image' else clips_npz
    result = run_cli('train', f'--model={model}', f'--data={data}', f'--model_dir={model_dir}',
                     '--train_steps=30', '--checkpoint_every=15', f'--hparams={small}', cwd=REPO)
    return kind, model_dir, result.stdout


def test_an_example_model_fn_trains_evaluates_and_exports_like_a_built_in_model(example_run):
    kind, model_dir, stdout = example_run
    assert 'step 30/30  loss' in stdout
    assert 'eval at step 30 on ' in stdout and 'accuracy ' in stdout
    for exports in ('best', 'latest'):
        version = max(os.listdir(os.path.join(model_dir, 'export', exports)))
        loaded = tf.saved_model.load(os.path.join(model_dir, 'export', exports, version))
        assert set(loaded.signatures) == ALL_SIGNATURES[kind]
    evaluated = json.loads(run_cli('evaluate', f'--model_dir={model_dir}', cwd=REPO).stdout)
    assert evaluated['global_step'] == 30 and 0.0 <= evaluated['accuracy'] <= 1.0
    exported = run_cli('export', f'--model_dir={model_dir}', cwd=REPO).stdout.strip().splitlines()[-1]
    assert os.path.exists(os.path.join(exported, 'saved_model.pb'))


def test_its_export_answers_bin_predict_as_estimator_predict_does(example_run, tmp_path):
    kind, model_dir, _ = example_run
    run = experiment.load_run(model_dir)
    examples = held_out_arrays(run, 6)
    if kind == 'clip':  # clips of different lengths, through the signature that takes them
        body = {'signature_name': 'predict_with_lengths',
                'inputs': {'frames': examples.inputs.tolist(), 'lengths': examples.lengths.tolist()}}
        assert len(set(examples.lengths.tolist())) > 1
    else:
        body = {'instances': examples.inputs.tolist()}
    request = tmp_path / 'request.json'
    request.write_text(json.dumps(body))
    answer = json.loads(run_cli('predict', f'--saved_model={model_dir}/export/latest',
                                f'--request={request}', cwd=REPO).stdout)
    served = (np.array(answer['outputs']['probabilities']) if kind == 'clip'
              else np.array([row['probabilities'] for row in answer['predictions']]))
    expected = np.stack([row['probabilities'] for row in experiment.predict(run, examples)])
    np.testing.assert_allclose(served, expected, atol=1e-5)


def _user_module(tmp_path, monkeypatch, name, source):
    """Writes a module of the user's into tmp_path and makes it importable."""
    (tmp_path / f'{name}.py').write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))


WITHOUT_PROBABILITIES = '''
    import tensorflow as tf

    def model_fn(features, labels, mode, params):
        logits = tf.compat.v1.layers.dense(tf.compat.v1.layers.flatten(features['image']), 10)
        return tf.estimator.EstimatorSpec(mode, predictions={'logits': logits})
'''


@pytest.mark.parametrize('model, message', [
    ('no_such_package.models:model_fn', 'cannot import no_such_package.models for --model='),
    ('user_models:missing', 'has no missing'),
    ('user_models:two_arguments', 'must take (features, labels, mode[, params]); missing mode'),
    ('user_models:needs_a_session', 'cannot pass session'),
    ('user_models:NOT_A_FUNCTION', 'is a int, not a model_fn'),
    ('user_models', "unknown model 'user_models'; choose one of"),
    ('user-models:model_fn', 'neither a registered model nor package.module:function'),
])
def test_a_model_that_cannot_be_loaded_is_one_error(model, message, tmp_path, monkeypatch):
    _user_module(tmp_path, monkeypatch, 'user_models', '''
        NOT_A_FUNCTION = 3
        def two_arguments(features, labels):
            pass
        def needs_a_session(features, labels, mode, session):
            pass
    ''')
    with pytest.raises(UserError) as raised:
        registry.get(model)
    assert message in str(raised.value)


def test_predictions_without_probabilities_are_refused_before_training(tmp_path, monkeypatch, digits_npz):
    _user_module(tmp_path, monkeypatch, 'logits_only', WITHOUT_PROBABILITIES)
    with pytest.raises(UserError, match=r'must return predictions=\{"probabilities".*it returned logits'):
        experiment.prepare_training('logits_only:model_fn', str(tmp_path / 'run'), digits_npz)
    assert not os.path.exists(tmp_path / 'run')


def test_bin_train_reports_a_broken_model_fn_in_one_line(tmp_path, digits_npz):
    (tmp_path / 'broken_model.py').write_text('def model_fn(features, labels, mode, params):\n'
                                              '    return features["no_such_feature"]\n')
    result = run_cli('train', '--model=broken_model:model_fn', f'--data={digits_npz}',
                     f'--model_dir={tmp_path / "run"}', check=False, cwd=str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('error: broken_model:model_fn failed building the infer graph at ')
    assert "broken_model.py:2: KeyError: 'no_such_feature'" in lines[0]


def test_hparams_the_project_does_not_know_pass_through_typed_as_written():
    model = registry.get('examples.legacy_clip_rnn:model_fn')
    resolved = hparams.resolve(model, {'frame_units': '32', 'rate': '0.5', 'name': 'wide',
                                       'sizes': '[1,2]', 'tied': 'true'}, (32, 32, 1, 8))
    assert resolved['frame_units'] == 32 and resolved['rate'] == 0.5 and resolved['name'] == 'wide'
    assert resolved['sizes'] == [1, 2] and resolved['tied'] is True
    assert resolved['kind'] == 'clip' and resolved['rnn_units'] == 128
    with pytest.raises(UserError, match="unknown hparam 'frame_units'"):
        hparams.resolve(registry.get('pixel_row_lstm'), {'frame_units': '32'}, (28, 28, 1, 10))


def test_the_kind_comes_from_the_module_or_the_kind_hparam(tmp_path, monkeypatch):
    _user_module(tmp_path, monkeypatch, 'kindless', WITHOUT_PROBABILITIES)
    assert registry.get('kindless:model_fn').KIND == 'image'
    assert registry.get('kindless:model_fn', kind='clip').DEFAULT_DATA == 'moving_glyphs'
    assert registry.get('examples.legacy_clip_rnn:model_fn').KIND == 'clip'
    with pytest.raises(UserError, match="kind=image contradicts KIND='clip'"):
        registry.get('examples.legacy_clip_rnn:model_fn', kind='image')
    assert isinstance(registry.get('kindless:model_fn'), user_model_fn.UserModel)
