"""`bin/benchmark --step_breakdown`: where a training step of the project's model goes.

The project's Estimator trains on the benchmark's seeded random data (as `--train` does:
bin/train's input_fn, model_fn and hooks, no evaluation), and a few steps after the
warm-up run with TensorFlow's full trace (RunOptions FULL_TRACE). Each op's time in
those steps is summed by op type: the recurrent kernel, matmuls, convolutions and their
gradients, the input pipeline's hand-over, the optimizer, and the rest. The untraced
steps around them give the step's wall time, which the traced ones would inflate, and
the CPU time the process spent in it (all its threads): on a shared machine, where a
step's wall time also holds the time its threads waited for a core, the CPU time moves
less.

Op times overlap where ops run side by side on the two thread pools, so their sum may
exceed the wall time of a step; their shares say where the work is.
"""

import collections
import os
import statistics
import tempfile
import time

import tensorflow as tf

from estimator_models.benchmarks import training
from estimator_models.running import experiment

TRACED_STEPS = 10
# Op types gathered under one name in the summary, by what they do for a step.
GROUPS = {
    'recurrent kernel': ('LstmSequence', 'LstmSequenceGrad'),
    'matmul': ('MatMul', '_MklMatMul', '_MklNativeFusedMatMul', 'BatchMatMulV2', '_MklBatchMatMulV2'),
    'convolution': ('Conv2D', '_MklNativeConv2D', '_MklNativeFusedConv2D', 'Conv2DBackpropFilter',
                    'Conv2DBackpropInput', '_MklNativeConv2DBackpropFilter',
                    '_MklNativeConv2DBackpropInput', '_MklNativeConv2DBackpropFilterWithBias'),
    'pooling and BatchNorm': ('MaxPool', 'MaxPoolGrad', '_MklNativeMaxPool', '_MklNativeMaxPoolGrad',
                              'FusedBatchNormV3', 'FusedBatchNormGradV3', '_MklNativeFusedBatchNormV3',
                              '_MklNativeFusedBatchNormGradV3'),
    'input pipeline hand-over': ('IteratorGetNext',),
    'optimizer': ('ResourceApplyAdam', 'ApplyAdam'),
}


class _TracingHook(tf.compat.v1.train.SessionRunHook):
    """Runs steps [first, first + TRACED_STEPS) with a full trace, sums each op type's time
    over them, and times every other step after `first - 1`."""

    def __init__(self, first):
        self._first = first
        self._step = 0
        self._started = self._cpu_started = None
        self.op_micros = collections.Counter()
        self.untraced_secs = []
        self.untraced_cpu_secs = []

    def _traced(self, step):
        return self._first <= step < self._first + TRACED_STEPS

    def before_run(self, run_context):
        self._step += 1
        self._started, self._cpu_started = time.perf_counter(), time.process_time()
        if self._traced(self._step):
            options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
            return tf.compat.v1.train.SessionRunArgs(None, options=options)
        return None

    def after_run(self, run_context, run_values):
        if not self._traced(self._step):
            if self._step >= self._first - 1:
                self.untraced_secs.append(time.perf_counter() - self._started)
                self.untraced_cpu_secs.append(time.process_time() - self._cpu_started)
            return
        for device in run_values.run_metadata.step_stats.dev_stats:
            for node in device.node_stats:
                self.op_micros[op_type(node)] += node.all_end_rel_micros


def op_type(node):
    """The op type of a traced node: its timeline label reads `name = Type(inputs)`."""
    label = node.timeline_label
    if ' = ' in label:
        return label.split(' = ', 1)[1].split('(', 1)[0].strip()
    return node.node_name.split(':')[0]


def step_breakdown(model_name, overrides, steps, warmup_steps, seed=0):
    """Trains the project's `model_name` for `steps` steps and traces TRACED_STEPS of them
    after `warmup_steps`. Returns a JSON-ready dict: the hparams that set the speed, the
    median untraced step (ms), its examples/s and CPU time (ms, all threads), and per op
    type and per group the milliseconds per step and their share of the traced op time."""
    overrides = {'augment': 'none', **overrides}
    kind, hparams = training.data_hparams(model_name, overrides)
    hook = _TracingHook(first=warmup_steps + 1)
    with tempfile.TemporaryDirectory(prefix='step_breakdown_') as work_dir:
        data = training.write_random_data(os.path.join(work_dir, 'data.npz'), kind, hparams['batch_size'], seed)
        run, train_source, _ = experiment.prepare_training(model_name, None, data.path, None, overrides)
        training.train_estimator(run, train_source, os.path.join(work_dir, 'run'), steps, seed, hook)
    step_secs = statistics.median(hook.untraced_secs)
    total = sum(hook.op_micros.values())
    return {
        'model': model_name,
        'hparams': {key: run.hparams[key] for key in ('batch_size', 'rnn_units', 'rnn_implementation', 'precision')},
        'training_precision': experiment.training_precision(run.hparams),
        'overrides': dict(overrides), 'traced_steps': TRACED_STEPS,
        'step_ms': round(1000 * step_secs, 3),
        'examples_per_sec': round(run.hparams['batch_size'] / step_secs, 1),
        'cpu_ms_per_step': round(1000 * statistics.median(hook.untraced_cpu_secs), 3),
        'op_ms_per_step': round(total / 1000 / TRACED_STEPS, 3),
        'groups': _shares(_grouped(hook.op_micros), total),
        'ops': _shares(hook.op_micros, total),
    }


def _grouped(op_micros):
    groups = collections.Counter()
    for op, micros in op_micros.items():
        name = next((group for group, members in GROUPS.items() if op in members), 'everything else')
        groups[name] += micros
    return groups


def _shares(micros, total):
    """[{name, ms_per_step, share}] largest first (names with under 0.1% of the time left out)."""
    return [{'name': name, 'ms_per_step': round(value / 1000 / TRACED_STEPS, 3), 'share': round(value / total, 3)}
            for name, value in micros.most_common() if value >= 0.001 * total]


def markdown_table(result):
    """The groups and the ten costliest op types as a Markdown table."""
    lines = [f'{result["model"]}: {result["step_ms"]} ms a step ({result["examples_per_sec"]} examples/s), '
             f'{result["cpu_ms_per_step"]} ms of CPU time, {result["op_ms_per_step"]} ms of op time',
             '', '| | ms per step | share |', '|---|---|---|']
    lines += [f'| {row["name"]} | {row["ms_per_step"]} | {100 * row["share"]:.1f}% |' for row in result['groups']]
    lines += [f'| `{row["name"]}` | {row["ms_per_step"]} | {100 * row["share"]:.1f}% |' for row in result['ops'][:10]]
    return '\n'.join(lines)
