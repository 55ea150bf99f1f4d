"""bin/benchmark: serving latency, the training input pipeline, training against Keras and
PyTorch twins, local clusters, or data for the memory benchmark (BENCHMARKS.md)."""

import contextlib
import os
import sys

from absl import flags

from estimator_models import registry
from estimator_models.benchmarks import clusters, input_pipeline, latency, step_breakdown, training
from estimator_models.errors import UserError
from estimator_models.running import experiment, hparams
from estimator_models.running.cli import json_output
from estimator_models.running.cli.command import Command, require
from estimator_models.running.cli.flag_groups import SAVED_MODEL, FlagGroup, data_group, flag, model_group
from estimator_models.serving import onnx_export, onnx_serving, predicting
from input_fns import specs

BENCHMARK = FlagGroup('benchmark', (
    flag(flags.DEFINE_bool, 'train', False,
         'Compare the training rate of --model with twins of the same architecture in Keras and '
         'PyTorch (--peers), on the same random data, in rounds.'),
    flag(flags.DEFINE_bool, 'step_breakdown', False,
         "Trace --model's training steps on the same random data as --train and report the time of "
         'each kind of op per step (--steps in all, traced after --warmup_steps).'),
    flag(flags.DEFINE_bool, 'cluster', False,
         'Train --model (default pixel_row_lstm) for --steps global steps in local clusters of 1 '
         'worker, 2 workers + 1 ps, and 2 all-reduce workers; report their examples/s. Runs go to '
         'runs/cluster_benchmark.'),
    flag(flags.DEFINE_bool, 'serving', False, 'Measure serving latency of --saved_model (and --onnx).'),
    flag(flags.DEFINE_bool, 'input_only', False, 'Measure the training input pipeline of --data alone.'),
    flag(flags.DEFINE_string, 'write_noise_clips', None,
         'Write TFRecord clips of noise frames to this prefix (data for the memory benchmark), '
         'about --gigabytes of them.'),
))
MODEL = model_group(
    'The model to train with --train and --cluster; with --input_only, the model whose input size and '
    'hparams to use (default: pixel_row_lstm for images, temporal_cnn_lstm for clips).')
DATA = data_group("For --input_only and --cluster; default: the model's embedded dataset")
SERVING = FlagGroup('serving', (
    SAVED_MODEL,
    flag(flags.DEFINE_string, 'onnx', None,
         'With --serving: also time this ONNX file (of the same model) in onnxruntime.'),
    flag(flags.DEFINE_list, 'batch_sizes', ['1', '32'], 'Batch sizes to measure.'),
    flag(flags.DEFINE_integer, 'calls', 200, 'Timed calls per signature and batch size.'),
))
TRAINING = FlagGroup('training', (
    flag(flags.DEFINE_integer, 'steps', 200,
         'Training steps of each side in each --train round (with --cluster: global steps of each '
         'cluster).'),
    flag(flags.DEFINE_integer, 'rounds', 3, 'Rounds of --train, alternating the project and its peers.'),
    flag(flags.DEFINE_integer, 'warmup_steps', 20,
         "Untimed first steps of each --train round; the project's run through its step "
         f'{training.FIRST_STEADY_STEP}, the first with a new set of fetches, when the timed steps '
         'would include it.'),
    flag(flags.DEFINE_bool, 'startup', True,
         'With --train, also time a default bin/train --model to its first step and take its peak memory.'),
    flag(flags.DEFINE_list, 'peers', list(training.PEERS),
         'With --train, the twins to compare with: keras_float32 and keras_mixed_bfloat16 (a Keras '
         'model under that mixed-precision policy), torch_float32 and torch_autocast_bfloat16 '
         '(a PyTorch module, under torch.autocast to bfloat16). Leave out the torch_ ones to run '
         'without PyTorch.'),
    flag(flags.DEFINE_string, 'torch_python', None,
         'With --train and a torch_ peer: the Python that runs the PyTorch twins (it needs torch '
         'and numpy). Default: a venv of requirements-torch.txt made on first use in the cache '
         'folder (about 1 GB, 50 s).'),
))
INPUT = FlagGroup('input pipeline', (
    flag(flags.DEFINE_integer, 'batches', 300, 'Timed batches for --input_only, after --warmup_batches.'),
    flag(flags.DEFINE_integer, 'warmup_batches', 30, 'Untimed batches first (the shuffle buffer fills).'),
))
NOISE_CLIPS = FlagGroup('noise clips', (
    flag(flags.DEFINE_float, 'gigabytes', 2.0, 'Size of --write_noise_clips.'),
))


def run(options, argv):
    del argv
    if options.train:
        _benchmark_training(options)
    elif options.step_breakdown:
        _step_breakdown(options)
    elif options.cluster:
        _benchmark_clusters(options)
    elif options.input_only:
        _benchmark_input(options)
    elif options.write_noise_clips:
        summary = input_pipeline.write_noise_clips(options.write_noise_clips, options.gigabytes)
        print(f'wrote {summary["examples"]} clips, {summary["bytes"] / 1e9:.2f} GB: '
              f'{options.write_noise_clips}.tfrecord-*')
    elif options.serving:
        _benchmark_serving(options)
    else:
        raise UserError('choose a benchmark: --train, --step_breakdown, --cluster, --serving, --input_only '
                        'or --write_noise_clips')


def _benchmark_serving(options):
    require(options, 'saved_model')
    try:
        batch_sizes = [int(size) for size in options.batch_sizes]
    except ValueError:
        raise UserError(f'--batch_sizes must be integers, got {",".join(options.batch_sizes)}') from None
    if options.calls < 1 or min(batch_sizes) < 1:
        raise UserError('--calls and --batch_sizes must be positive')
    if options.onnx:
        onnx_export.check_available()
        onnx_serving.load(options.onnx)  # a bad file is one line before any timing
    rows = latency.serving_latency(options.saved_model, batch_sizes, options.calls, options.onnx)
    print(f'serving latency of {predicting.resolve_version(options.saved_model)} '
          f'(in-process, {os.cpu_count()} CPU cores)')
    print(latency.markdown_table(rows))
    json_output.write(rows, options.json_out)


def _benchmark_training(options):
    require(options, 'model')
    if options.steps < 2 or options.rounds < 1:
        raise UserError(f'--steps must be at least 2 and --rounds at least 1, '
                        f'got --steps={options.steps} --rounds={options.rounds}')
    if not 1 <= options.warmup_steps < options.steps:
        raise UserError(f'--warmup_steps must lie in 1..{options.steps - 1} (below --steps), '
                        f'got {options.warmup_steps}')
    # Training prints its progress lines on stdout; here stdout is the one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        result = training.train_benchmark(
            options.model, hparams.parse_overrides(options.hparams),
            training.Timing(options.steps, options.rounds, options.warmup_steps), options.peers,
            options.torch_python, options.startup)
    json_output.report(result, options.json_out)


def _step_breakdown(options):
    require(options, 'model')
    if options.warmup_steps < 1 or options.steps < options.warmup_steps + step_breakdown.TRACED_STEPS + 10:
        raise UserError(f'--step_breakdown traces {step_breakdown.TRACED_STEPS} steps after --warmup_steps and '
                        f'times 10 more: --steps must be at least --warmup_steps + '
                        f'{step_breakdown.TRACED_STEPS + 10}, got --steps={options.steps} '
                        f'--warmup_steps={options.warmup_steps}')
    with contextlib.redirect_stdout(sys.stderr):
        result = step_breakdown.step_breakdown(options.model, hparams.parse_overrides(options.hparams),
                                               options.steps, options.warmup_steps)
    print(step_breakdown.markdown_table(result), file=sys.stderr)
    json_output.report(result, options.json_out)


def _benchmark_clusters(options):
    if options.steps < 2:
        raise UserError(f'--steps must be at least 2, got {options.steps}')
    model = options.model or 'pixel_row_lstm'
    registry.get(model)
    # The clusters' progress goes to stderr; stdout is the one JSON object.
    result = clusters.cluster_benchmark(model, options.steps, options.hparams,
                                        os.path.join('runs', 'cluster_benchmark'), sys.stderr,
                                        data=options.data)
    json_output.report(result, options.json_out)


def _benchmark_input(options):
    if options.batches < 1 or options.warmup_batches < 0:
        raise UserError('--batches must be positive and --warmup_batches not negative')
    model = options.model
    if model is None:
        kind = specs.open_splits(options.data, None, options.data_dir)[0].info.kind if options.data else 'image'
        model = 'temporal_cnn_lstm' if kind == 'clip' else 'pixel_row_lstm'
    prepared, train_source, _ = experiment.prepare_training(
        model, None, options.data, None, hparams.parse_overrides(options.hparams), options.data_dir)
    result = input_pipeline.input_throughput(prepared, train_source, options.batches, options.warmup_batches)
    json_output.report(result, options.json_out)


COMMAND = Command(
    summary='measures serving latency, the input pipeline, training against Keras and PyTorch, or local clusters.',
    examples=('--serving --saved_model=runs/cnn_lstm/export/latest --json_out=latency.json',
              '--train --model=pixel_row_lstm --hparams=rnn_units=64'),
    flag_groups=(BENCHMARK, MODEL, DATA, SERVING, TRAINING, INPUT, NOISE_CLIPS, json_output.OUTPUT),
    run=run)
