"""bin/benchmark --cluster: training examples/s of one model in local clusters of three shapes.

Each shape is a real bin/launch_local_cluster run (no evaluator, one checkpoint at the
end) of `--steps` global steps on the model's embedded data. The rate is the one the
chief writes to TensorBoard as `examples_per_sec`: global steps per second times the
examples of a global step (the batch, times the replicas under all-reduce; a ps-mode
worker's step is one batch). The first interval (start-up and the first graph
execution) is left out; the median of the rest is reported.
"""

import os
import shutil
import statistics
import time

import tensorflow as tf

from estimator_models.running import local_cluster

# name: (training processes, ps tasks, --distribution)
SHAPES = {
    '1 worker': (1, 0, 'none'),
    '2 workers + 1 ps': (2, 1, 'none'),
    '2 all-reduce workers': (2, 0, 'multi_worker_mirrored'),
}
RATE_TAG = 'examples_per_sec'


def cluster_benchmark(model, steps, hparams_flag, work_dir, out, shapes=None, data=None):
    """Runs each of `shapes` (default SHAPES) in turn on the data spec `data` (default:
    the model's embedded data), writing under work_dir, the clusters' lines to `out`;
    returns a JSON-ready dict of their rates."""
    rows = []
    for name, (workers, parameter_servers, distribution) in (shapes or SHAPES).items():
        model_dir = os.path.join(work_dir, name.replace(' ', '_').replace('+', 'and'))
        shutil.rmtree(model_dir, ignore_errors=True)
        train_flags = [f'--model={model}', f'--model_dir={model_dir}', f'--train_steps={steps}',
                       f'--checkpoint_every={steps}', f'--distribution={distribution}',
                       '--save_every_secs=0', '--summary_images_every=0']
        train_flags += [f'--hparams={hparams_flag}'] * bool(hparams_flag) + [f'--data={data}'] * bool(data)
        start = time.time()
        status = local_cluster.LocalCluster(workers, parameter_servers, False, train_flags,
                                            out=out).run()
        if status != 0:
            raise RuntimeError(f'the {name} cluster failed (status {status}); logs in {model_dir}')
        rates = scalar_values(model_dir, RATE_TAG)[1:]
        rows.append({
            'cluster': name, 'workers': workers, 'ps': parameter_servers, 'distribution': distribution,
            'examples_per_sec_median': round(statistics.median(rates), 1) if rates else None,
            'examples_per_sec_min': round(min(rates), 1) if rates else None,
            'examples_per_sec_max': round(max(rates), 1) if rates else None,
            'intervals': len(rates), 'wall_seconds': round(time.time() - start, 1),
        })
    return {'model': model, 'data': data, 'steps': steps, 'hparams': hparams_flag, 'cores': os.cpu_count(),
            'clusters': rows}


def scalar_values(model_dir, tag):
    """The values of a scalar summary in model_dir's training events, in step order."""
    points = []
    for path in tf.io.gfile.glob(os.path.join(model_dir, 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            points += [(event.step, value.simple_value) for value in event.summary.value if value.tag == tag]
    return [value for _, value in sorted(points)]
