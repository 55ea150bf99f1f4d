"""bin/benchmark: --serving (the latency of every signature, under both runtimes, on a
real export) and --input_only (the training input pipeline alone)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli
from estimator_models.benchmarks import input_pipeline, latency
from estimator_models.serving import predicting


@pytest.mark.parametrize('export_fixture', ['digits_export', 'clips_export'])
def test_both_runtimes_answer_every_signature_alike(request, export_fixture):
    _, path, _ = request.getfixturevalue(export_fixture)
    loaded = tf.saved_model.load(path)
    in_session = latency.session_callers(path)
    as_functions = latency.function_callers(loaded)
    inputs = latency.signature_inputs(loaded, batch_size=3)
    assert set(inputs) == set(in_session) == set(as_functions)
    for key, feed in inputs.items():
        session_outputs = in_session[key](feed)
        function_outputs = as_functions[key]({name: tf.constant(value) for name, value in feed.items()})
        assert len(session_outputs) == len(function_outputs)
        # Outputs come back in each signature's output order, the same for both runtimes.
        for from_session, from_function in zip(session_outputs, function_outputs):
            assert from_session.shape[0] == 3
            if from_session.dtype.kind == 'f':
                np.testing.assert_allclose(from_session, from_function, atol=1e-5)
            else:
                np.testing.assert_array_equal(from_session, from_function)


def test_bin_benchmark_reports_each_runtime_signature_and_batch(clips_export, tmp_path):
    _, path, _ = clips_export
    rows_file = tmp_path / 'rows.json'
    result = run_cli('benchmark', '--serving', f'--saved_model={path}', '--batch_sizes=1,4',
                     '--calls=5', f'--json_out={rows_file}')
    rows = json.loads(rows_file.read_text())
    signatures = set(predicting.load(path).signatures)
    assert {(row['runtime'], row['signature'], row['batch_size']) for row in rows} == {
        (runtime, key, batch) for runtime in latency.RUNTIMES for key in signatures for batch in (1, 4)}
    for row in rows:
        assert 0 < row['p50_ms'] <= row['p99_ms'] and row['calls'] == 5
    assert '| session | predict_bytes | 4 |' in result.stdout


def test_bin_benchmark_refuses_a_missing_saved_model(tmp_path):
    result = run_cli('benchmark', '--serving', f'--saved_model={tmp_path}/nothing', check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f'error: no SavedModel at {tmp_path}/nothing']


def test_input_only_times_the_training_input_pipeline(digits_npz):
    result = run_cli('benchmark', '--input_only', f'--data={digits_npz}', '--batches=5',
                     '--warmup_batches=1', '--hparams=batch_size=16')
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['model'] == 'pixel_row_lstm' and report['batch_size'] == 16
    assert report['batches'] == 5 and report['examples_per_sec'] > 0 and report['peak_rss_mb'] > 0
    assert digits_npz in report['data']


def test_noise_clips_for_the_memory_benchmark_train_from_tfrecords(tmp_path):
    """The small version of `make memory-benchmark`: noise clips written as TFRecords and
    read back by the clip model's input pipeline."""
    prefix = str(tmp_path / 'noise')
    summary = input_pipeline.write_noise_clips(prefix, gigabytes=0.003, frame_size=24, shards=2)
    assert summary['examples'] > 0 and len(summary['shards']) == 2
    assert summary['bytes'] > 0.8 * 0.003e9  # noise does not compress
    result = run_cli('benchmark', '--input_only', f'--data={prefix}.tfrecord*', '--batches=3',
                     '--warmup_batches=1', '--hparams=batch_size=4,height=16,width=16')
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['model'] == 'temporal_cnn_lstm' and report['examples_per_sec'] > 0
