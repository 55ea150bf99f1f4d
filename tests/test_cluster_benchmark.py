"""bin/benchmark --cluster: a real local cluster's training rate, read from the events its
chief wrote. (The three-shape run is `bin/benchmark --cluster`, in BENCHMARKS.md.)"""

import io

from conftest import TINY
from estimator_models.benchmarks import clusters


# The chief writes examples_per_sec every 100 steps, from step 101: 300 steps write two, and
# with the first (start-up) left out, one is reported.
STEPS = 300


def test_a_one_worker_cluster_reports_its_examples_per_second(tmp_path, digits_npz):
    hparams = ','.join(f'{key}={value}' for key, value in TINY['pixel_row_lstm'].items())
    lines = io.StringIO()
    result = clusters.cluster_benchmark(
        'pixel_row_lstm', STEPS, hparams, str(tmp_path), lines,
        shapes={'1 worker': clusters.SHAPES['1 worker']}, data=digits_npz)
    (row,) = result['clusters']
    assert row['cluster'] == '1 worker' and row['intervals'] >= 1
    assert 0 < row['examples_per_sec_min'] <= row['examples_per_sec_median'] <= row['examples_per_sec_max']
    assert f'chief: done: trained to step {STEPS}' in lines.getvalue()
