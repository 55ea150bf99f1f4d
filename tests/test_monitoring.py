"""What TensorBoard shows: one short bin/train run (conftest's digits run), then its event
files, its profiler trace and a real TensorBoard server reading them, checked against
bin/evaluate and Estimator.predict on the same checkpoint."""

import collections
import contextlib
import functools
import glob
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from conftest import (DIGITS_RUN_BATCH_SIZE as BATCH_SIZE, DIGITS_RUN_CHECKPOINT_EVERY as CHECKPOINT_EVERY,
                      DIGITS_RUN_PROFILE_STEPS as PROFILE_STEPS, DIGITS_RUN_STEPS as STEPS, digits_run_args,
                      held_out_arrays, run_cli)
from estimator_models import pixel_row_lstm, registry, run_description
from estimator_models.errors import UserError
from estimator_models.layers import summaries
from estimator_models.running import experiment, monitoring
from estimator_models.running import hparams as hparams_lib

NUM_CLASSES = 10
TRAIN_SCALARS = ('loss', 'accuracy', 'learning_rate', 'gradient_norm', 'examples_per_sec',
                 'global_step/sec')
EVAL_SCALARS = ('loss', 'accuracy', 'top_5_accuracy', 'mean_per_class_accuracy')
RESUMED_STEPS = 3
SHORT_RUN_STEPS = 4
SESSION_STATUSES = ['STATUS_UNKNOWN', 'STATUS_SUCCESS', 'STATUS_FAILURE', 'STATUS_RUNNING']

Event = collections.namedtuple('Event', 'step value')


@pytest.fixture(scope='module')
def model_dir(digits_run):
    """The digits run: histograms, input images and a profiled span of steps."""
    return digits_run[0]


def _event_protos(directory):
    """The Event protos of the event files directly in directory, oldest file first."""
    for path in sorted(glob.glob(os.path.join(directory, 'events.out.tfevents.*'))):
        yield from tf.compat.v1.train.summary_iterator(path)


def _events(directory):
    """{tag: [Event(step, summary value proto)]} from the event files directly in directory."""
    tags = collections.defaultdict(list)
    for event in _event_protos(directory):
        for value in event.summary.value:
            tags[value.tag].append(Event(event.step, value))
    return tags


def _session_start_steps(directory):
    """The steps of the SessionLog.START events in directory's event files."""
    return [event.step for event in _event_protos(directory)
            if event.session_log.status == tf.compat.v1.SessionLog.START]


def _logged_steps(directory, tag):
    return [event.step for event in _events(directory)[tag]]


def _assert_finite_scalars_at_increasing_steps(events, tags):
    for tag in tags:
        assert events[tag], f'no {tag}'
        steps = [event.step for event in events[tag]]
        assert steps == sorted(set(steps)), f'{tag} steps {steps}'
        assert all(math.isfinite(event.value.simple_value) for event in events[tag]), tag


def test_train_run_has_scalars_images_and_histograms(model_dir):
    events = _events(model_dir)
    _assert_finite_scalars_at_increasing_steps(events, TRAIN_SCALARS)
    # Both rates cover the same intervals; every step reads one full batch.
    for rate, steps_per_sec in zip(events['examples_per_sec'], events['global_step/sec']):
        assert rate.step == steps_per_sec.step
        assert rate.value.simple_value == pytest.approx(
            BATCH_SIZE * steps_per_sec.value.simple_value, rel=0.05)
    images = events['input_images/image/0']
    assert [event.step for event in images] == [1, 11, 21]  # the first step, then every 10
    assert (images[0].value.image.height, images[0].value.image.width) == (28, 28)
    for tag in ('weights/rnn_0/lstm_cell/kernel', 'weights/logits/kernel', 'activations/sequence',
                'activations/final_state', 'activations/logits'):
        assert events[tag] and events[tag][0].value.histo.num > 0, tag


def test_tensorboard_loader_keeps_every_scalar_from_the_first_logged_step(model_dir):
    # A SessionLog.START tells TensorBoard's loader that the run restarted at its step:
    # it drops every value already read from that step on.
    assert _session_start_steps(model_dir) == [1]
    accumulator = event_accumulator.EventAccumulator(model_dir)
    accumulator.Reload()
    for tag in TRAIN_SCALARS:
        assert [scalar.step for scalar in accumulator.Scalars(tag)] == _logged_steps(model_dir, tag), tag
    assert accumulator.Scalars('loss')[0].step == 1


def test_eval_run_has_metrics_confusion_matrix_and_pr_curves(model_dir):
    events = _events(os.path.join(model_dir, 'eval'))
    _assert_finite_scalars_at_increasing_steps(events, EVAL_SCALARS)
    assert [event.step for event in events['accuracy']] == [CHECKPOINT_EVERY, STEPS]
    matrix = events['confusion_matrix/0'][-1].value.image
    side = NUM_CLASSES * summaries.CONFUSION_CELL_PIXELS
    assert (matrix.height, matrix.width) == (side, side)
    for k in range(NUM_CLASSES):
        curves = events[f'pr_curves/{k}']
        assert [event.step for event in curves] == [CHECKPOINT_EVERY, STEPS]
        assert curves[0].value.metadata.plugin_data.plugin_name == 'pr_curves'
        data = tf.make_ndarray(curves[-1].value.tensor)
        assert data.shape == (6, summaries.PR_CURVE_THRESHOLDS)


def test_eval_summaries_agree_with_bin_evaluate_and_the_predictions(model_dir):
    evaluated = json.loads(run_cli('evaluate', f'--model_dir={model_dir}').stdout)
    events = _events(os.path.join(model_dir, 'eval'))
    final = {tag: events[tag][-1] for tag in EVAL_SCALARS + ('confusion_matrix/0',)}
    assert all(event.step == STEPS for event in final.values())
    for tag in EVAL_SCALARS:
        assert evaluated[tag] == pytest.approx(final[tag].value.simple_value, abs=1e-6), tag
    assert 'confusion_matrix' not in evaluated and 'pr_curves' not in evaluated

    run = experiment.load_run(model_dir)
    held_out = held_out_arrays(run)
    predicted = np.array([row['classes'] for row in experiment.predict(run, held_out)])
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES))
    np.add.at(confusion, (held_out.labels, predicted), 1)
    support = confusion.sum(axis=1)
    fractions = confusion / np.maximum(support, 1)[:, None]
    assert evaluated['mean_per_class_accuracy'] == pytest.approx(
        np.mean(np.diag(fractions)[support > 0]), abs=1e-6)

    image = tf.io.decode_png(final['confusion_matrix/0'].value.image.encoded_image_string).numpy()
    centres = image[summaries.CONFUSION_CELL_PIXELS // 2::summaries.CONFUSION_CELL_PIXELS,
                    summaries.CONFUSION_CELL_PIXELS // 2::summaries.CONFUSION_CELL_PIXELS, 0]
    empty_red, full_red = summaries.EMPTY_COLOR[0], summaries.FULL_COLOR[0]
    shown = (empty_red - centres / 255.0) / (empty_red - full_red)
    np.testing.assert_allclose(shown, fractions, atol=0.01)

    for k in range(NUM_CLASSES):
        true_pos, _, _, false_neg = tf.make_ndarray(events[f'pr_curves/{k}'][-1].value.tensor)[:4]
        np.testing.assert_array_equal(true_pos + false_neg, support[k])  # every example of class k


def test_profile_trace_covers_exactly_the_requested_steps(model_dir):
    traces = glob.glob(os.path.join(model_dir, 'plugins', 'profile', '*', '*.xplane.pb'))
    assert len(traces) == 1
    with open(traces[0], 'rb') as stream:
        space = xplane_pb2.XSpace.FromString(stream.read())
    # One Adam update of the logits bias per training step traced.
    updates = sum(1 for plane in space.planes for line in plane.lines for event in line.events
                  if plane.event_metadata[event.metadata_id].name.startswith(
                      'Adam/update_logits/bias/ResourceApplyAdam:'))
    assert updates == PROFILE_STEPS[1] - PROFILE_STEPS[0] + 1


@pytest.mark.parametrize('text, message', [
    ('5', 'must be two steps A,B'),
    ('5,x', 'must be two steps A,B'),
    ('1,2,3', 'must be two steps A,B'),
    ('8,3', 'must satisfy 1 <= A <= B <= --train_steps (30)'),
    ('0,3', 'must satisfy 1 <= A <= B'),
    ('5,31', 'must satisfy 1 <= A <= B'),
])
def test_bad_profile_steps_are_refused(text, message):
    with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
        monitoring.parse_profile_steps(text, STEPS)


def test_profile_steps_may_be_one_step_or_the_whole_run():
    assert monitoring.parse_profile_steps('3,3', STEPS) == (3, 3)
    assert monitoring.parse_profile_steps('1,30', STEPS) == (1, 30)


def test_bin_train_reports_bad_profile_steps_in_one_line(digits_npz, tmp_path):
    result = run_cli('train', '--model=pixel_row_lstm', f'--data={digits_npz}',
                     f'--model_dir={tmp_path / "run"}', '--train_steps=30', '--profile_steps=9,3',
                     check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'error: --profile_steps=9,3 must satisfy 1 <= A <= B <= --train_steps (30)']
    assert not os.path.exists(tmp_path / 'run')


def test_clip_strips_show_each_clips_frames_left_to_right():
    rng = np.random.default_rng(0)
    frames = rng.uniform(size=(6, 3, 4, 5, 1)).astype(np.float32)  # [B, T, H, W, C]
    with tf.Graph().as_default():
        placeholder = tf.compat.v1.placeholder(tf.float32, [None, None, 4, 5, 1])
        summaries.clip_frames(placeholder, tf.estimator.ModeKeys.TRAIN, {'summary_images_every': 1})
        summary_op = tf.compat.v1.summary.merge_all(key=summaries.INPUT_IMAGES)
        with tf.compat.v1.Session() as session:
            summary = tf.compat.v1.Summary.FromString(
                session.run(summary_op, {placeholder: frames}))
    assert len(summary.value) == summaries.IMAGES_SHOWN
    for clip, value in zip(frames, summary.value):
        strip = tf.io.decode_png(value.image.encoded_image_string).numpy()  # [H, T*W, 1]
        expected = np.concatenate(list(clip), axis=1)                          # [H, T*W, 1]
        np.testing.assert_allclose(strip / 255.0, expected, atol=1 / 255.0)


def _free_port():
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _tensorboard(logdir, *flags):
    """A real TensorBoard server on localhost reading logdir, given `flags` too: yields its
    URL, and stops it when the block ends."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, '-m', 'tensorboard.main', '--logdir', logdir, '--host', '127.0.0.1',
         '--port', str(port), '--reload_interval', '1', *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f'http://127.0.0.1:{port}'
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def tensorboard_url(model_dir):
    """A real TensorBoard server on localhost reading model_dir; stopped after the test."""
    with _tensorboard(model_dir) as url:
        yield url


def _get(url, path, **query):
    with urllib.request.urlopen(f'{url}{path}?{urllib.parse.urlencode(query)}', timeout=10) as reply:
        return json.loads(reply.read())


def _post(url, path, request):
    """The JSON answer to a POST of the JSON `request`, as the HParams tab asks its plugin."""
    posted = urllib.request.Request(f'{url}{path}', data=json.dumps(request).encode(),
                                    headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(posted, timeout=10) as reply:
        return json.loads(reply.read())


def _poll(fetch, ready, timeout=90):
    """fetch() until ready(answer), as the TensorBoard page does while the server loads."""
    deadline = time.time() + timeout
    while True:
        try:
            answer = fetch()
            if ready(answer):
                return answer
        except OSError:  # not listening yet
            answer = None
        if time.time() > deadline:
            raise AssertionError(f'TensorBoard did not serve the data in {timeout}s; last answer: {answer}')
        time.sleep(1)


def test_tensorboard_serves_both_runs_their_scalars_and_images(tensorboard_url):
    runs = _poll(lambda: _get(tensorboard_url, '/data/runs'), lambda runs: {'.', 'eval'} <= set(runs))
    assert set(runs) >= {'.', 'eval'}
    scalar_tags = _poll(lambda: _get(tensorboard_url, '/data/plugin/scalars/tags'),
                        lambda tags: set(TRAIN_SCALARS) <= set(tags.get('.', {}))
                        and set(EVAL_SCALARS) <= set(tags.get('eval', {})))
    assert 'examples_per_sec' in scalar_tags['.']
    for run, tag, steps in (('.', 'loss', None), ('.', 'accuracy', None),
                            ('eval', 'loss', [CHECKPOINT_EVERY, STEPS]),
                            ('eval', 'accuracy', [CHECKPOINT_EVERY, STEPS])):
        series = _get(tensorboard_url, '/data/plugin/scalars/scalars', run=run, tag=tag)
        assert series, (run, tag)
        assert all(math.isfinite(value) for _, _, value in series)
        if steps:
            assert [step for _, step, _ in series] == steps
    image_tags = _poll(lambda: _get(tensorboard_url, '/data/plugin/images/tags'),
                       lambda tags: 'input_images/image/0' in tags.get('.', {})
                       and 'confusion_matrix/0' in tags.get('eval', {}))
    assert 'confusion_matrix/0' in image_tags['eval']
    pr_tags = _get(tensorboard_url, '/data/plugin/pr_curves/tags')
    assert {f'pr_curves/{k}' for k in range(NUM_CLASSES)} <= set(pr_tags['eval'])


def _served_steps(url, run, tag):
    return [step for _, step, _ in _get(url, '/data/plugin/scalars/scalars', run=run, tag=tag)]


def _served_sessions(url):
    """{session: {'group': name, 'hparams': {name: value}, 'metrics': {tag: (step, value)}}}
    as the HParams tab reads them."""
    answer = _post(url, '/data/plugin/hparams/session_groups', {
        'experimentName': '', 'allowedStatuses': SESSION_STATUSES, 'startIndex': 0, 'sliceSize': 100})
    sessions = {}
    for group in answer['sessionGroups']:
        for session in group['sessions']:
            metrics = {metric['name']['tag']: (metric['trainingStep'], metric['value'])
                       for metric in session['metricValues']}
            sessions[session['name']] = dict(group=group['name'], hparams=group['hparams'], metrics=metrics)
    return sessions


def _final_eval_metrics(run_dir):
    """{tag: (step, value)} of the last evaluation of accuracy and loss in run_dir/eval."""
    events = _events(os.path.join(run_dir, 'eval'))
    return {tag: (events[tag][-1].step, events[tag][-1].value.simple_value) for tag in ('accuracy', 'loss')}


def _serves_final_metrics(final):
    """Whether the served sessions are those of `final` {session: {tag: (step, value)}}, with
    metrics of the same steps (their values are checked after)."""
    def steps(metrics):
        return {tag: step for tag, (step, _) in metrics.items()}
    return lambda sessions: ({name: steps(session['metrics']) for name, session in sessions.items()}
                             == {name: steps(metrics) for name, metrics in final.items()})


def _assert_served_metrics(sessions, final):
    for name, metrics in final.items():
        for tag, (step, value) in metrics.items():
            assert sessions[name]['metrics'][tag] == (step, pytest.approx(value, abs=1e-6)), (name, tag)


def test_tensorboard_serves_the_first_step_of_a_fresh_and_a_resumed_run(model_dir, digits_npz, tmp_path):
    fresh, resumed = (shutil.copytree(model_dir, tmp_path / name) for name in ('fresh', 'resumed'))
    run_cli('train', *digits_run_args(digits_npz, resumed), f'--train_steps={STEPS + RESUMED_STEPS}')
    assert _session_start_steps(resumed) == [1, STEPS + 1]
    assert len(monitoring.hparams_event_files(resumed)) == 1  # the session of the run's first start
    logged = {run.name: _logged_steps(run, 'loss') for run in (fresh, resumed)}
    assert logged['fresh'][0] == logged['resumed'][0] == 1 and STEPS + 1 in logged['resumed']
    final = {run.name: _final_eval_metrics(run) for run in (fresh, resumed)}
    assert final['resumed']['accuracy'][0] == STEPS + RESUMED_STEPS
    # The Python loader, the one that acts on SessionLog.START.
    with _tensorboard(tmp_path, '--load_fast=false') as url:
        for run, steps in logged.items():
            _poll(functools.partial(_served_steps, url, run, 'loss'), steps.__eq__)
        sessions = _poll(functools.partial(_served_sessions, url), _serves_final_metrics(final))
    # Equal hparams: one group of two sessions, each with its own last evaluation.
    assert sessions['fresh']['group'] == sessions['resumed']['group']
    _assert_served_metrics(sessions, final)


def test_hparams_tab_shows_two_runs_side_by_side_with_their_final_eval_metrics(model_dir, digits_npz,
                                                                               tmp_path):
    wide, narrow = tmp_path / 'rnn_units_16', tmp_path / 'rnn_units_8'
    shutil.copytree(model_dir, wide)
    run_cli('train', '--model=pixel_row_lstm', f'--data={digits_npz}', f'--model_dir={narrow}',
            f'--train_steps={SHORT_RUN_STEPS}', f'--checkpoint_every={SHORT_RUN_STEPS}',
            f'--hparams=rnn_units=8,batch_size={BATCH_SIZE}')
    final = {run.name: _final_eval_metrics(run) for run in (wide, narrow)}
    assert final[wide.name]['accuracy'][0] == STEPS and final[narrow.name]['accuracy'][0] == SHORT_RUN_STEPS
    with _tensorboard(tmp_path) as url:
        sessions = _poll(functools.partial(_served_sessions, url), _serves_final_metrics(final))
        served_experiment = _post(url, '/data/plugin/hparams/experiment', {'experimentName': ''})

    _assert_served_metrics(sessions, final)
    assert [sessions[run.name]['hparams']['rnn_units'] for run in (wide, narrow)] == [16, 8]
    for run in (wide, narrow):
        written = monitoring.session_hparams(experiment.load_run(str(run)))
        assert sessions[run.name]['hparams'] == written
        assert set(written) == set(hparams_lib.declarations_for(pixel_row_lstm))

    assert [metric['name'] for metric in served_experiment['metricInfos']] == [
        {'group': 'eval', 'tag': 'accuracy'}, {'group': 'eval', 'tag': 'loss'}]
    infos = {info['name']: info for info in served_experiment['hparamInfos']}
    assert {'backbone', 'kind'} <= set(infos)  # other models' hparams too, so every run writes the same
    for name, data_type, values in (('cell', 'DATA_TYPE_STRING', ['gru', 'lstm']),
                                    ('bidirectional', 'DATA_TYPE_BOOL', [False, True])):
        assert (infos[name]['type'], sorted(infos[name]['domainDiscrete'])) == (data_type, values)
    assert infos['dropout']['domainInterval'] == {'minValue': 0.0, 'maxValue': 1.0}
    assert infos['rnn_units']['domainInterval'] == {'minValue': 0.0, 'maxValue': 'Infinity'}
    assert infos['rnn_units']['description'] == 'units of each recurrent layer'
    assert infos['cnn_filters']['type'] == 'DATA_TYPE_UNSET'


def test_a_user_model_fns_own_hparams_show_typed_as_written_and_a_list_as_text():
    model = 'examples.legacy_clip_rnn:model_fn'
    own = {'frame_units': '32', 'rate': '0.5', 'name': 'wide', 'sizes': '[1,2]', 'tied': 'true'}
    run = run_description.Run(model, 'unused', hparams_lib.resolve(registry.get(model), own, (32, 32, 1, 8)))
    shown = monitoring.session_hparams(run)
    assert {name: shown[name] for name in own} == {
        'frame_units': 32, 'rate': 0.5, 'name': 'wide', 'sizes': '[1, 2]', 'tied': True}
    assert shown['kind'] == 'clip' and shown['rnn_units'] == 128
    domains = {declared.name: declared.domain for declared in monitoring.experiment_hparams(shown)}
    assert all(domains[name] is None for name in own)
    assert domains['kind'].values == ['clip', 'image'] and domains['scan'].values == ['columns', 'rows']
