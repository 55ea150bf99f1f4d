"""What bin/train decides from its flags before it reads any data: a RunPlan, made once by
from_flags, which checks everything that needs no data, so that a mistake stops the run
before any data is prepared or anything is written."""

import dataclasses
import os
from typing import Optional

from estimator_models.legacy import warm_start
from estimator_models.running import cluster, experiment, hparams, monitoring
from estimator_models.serving import onnx_export
from estimator_models.errors import UserError

# bin/train's flags that set the hparam of their name.
HPARAM_FLAGS = ('batch_size', 'learning_rate', 'summary_images_every', 'histograms', 'skip_bad_records')
EXPORT_FORMATS = ('saved_model', 'onnx')


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """Where a new run's variables start: `source`, a checkpoint or a model_dir holding
    one; the variables whose names `variables_regex` matches; a TF1 LSTMCell
    checkpoint's `forget_bias`, folded into the bias it converts to."""
    source: str
    variables_regex: str = '.*'
    forget_bias: float = 1.0


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A training run as bin/train decided it, defaults filled in and checked.

    unopened_run: the experiment.UnopenedRun: the model, model_dir, data specs and the
      hparams but for those the data fills.
    train_steps: the global step training stops at.
    checkpoint_every: steps between checkpoints, each followed by an evaluation and
      exports; None: every experiment.CHECKPOINT_EVERY_SECS seconds and at the end.
    export_dir: where the SavedModels go.
    seed: of initialisation and shuffling.
    export_formats: 'saved_model', and 'onnx' for an ONNX file beside each SavedModel.
    distribution: one of experiment.DISTRIBUTIONS, fit for `task`.
    precision: what training runs in (experiment.training_precision); None: as a local
      run decides it, or nothing for a model without a precision hparam.
    warm_start: the WarmStart of a new run, or None.
    profile_steps: (first, last) global steps to trace with the profiler, or None.
    save_every_secs: seconds between checkpoints besides every checkpoint_every steps (0: none).
    xla: compile the training graph with XLA.
    lost_ps_timeout_secs: how long a ps task may not answer before the run ends (0: forever).
    task: this process's cluster.Task.
    """
    unopened_run: experiment.UnopenedRun
    train_steps: int
    checkpoint_every: Optional[int]
    export_dir: str
    seed: int
    export_formats: tuple = ('saved_model',)
    distribution: str = 'none'
    precision: Optional[str] = None
    warm_start: Optional[WarmStart] = None
    profile_steps: Optional[tuple] = None
    save_every_secs: int = 0
    xla: bool = False
    lost_ps_timeout_secs: int = 0
    task: cluster.Task = cluster.Task()


def from_flags(options, task):
    """The RunPlan of bin/train's parsed flags `options` for this process's cluster.Task
    `task`. Every check that needs no data runs here, each failure one UserError. A task
    other than the chief first waits for the chief's run record, which its plan follows."""
    _check_distribution(options.distribution, task)
    overrides = _hparam_overrides(options)
    _check_flags(options)
    model_dir = options.model_dir or os.path.join('runs', options.model.replace(':', '.'))
    export_dir = options.export_dir or os.path.join(model_dir, 'export')
    if not task.writes_run:
        cluster.wait_for_run_file(model_dir, task)
    unopened = experiment.validate_training(options.model, model_dir, options.data, options.eval_data,
                                            overrides, options.data_dir, export_dir)
    train_steps = options.train_steps or unopened.module.DEFAULT_TRAIN_STEPS
    return RunPlan(
        unopened_run=unopened, train_steps=train_steps,
        checkpoint_every=options.checkpoint_every, export_dir=export_dir, seed=options.seed,
        export_formats=tuple(options.export_formats),
        distribution=options.distribution, precision=_precision(unopened.hparams, task),
        warm_start=_warm_start(options), profile_steps=_profile_steps(options.profile_steps, train_steps),
        save_every_secs=options.save_every_secs, xla=options.xla,
        lost_ps_timeout_secs=options.lost_ps_timeout_secs, task=task)


def _check_distribution(distribution, task):
    if distribution not in experiment.DISTRIBUTIONS:
        raise UserError(f'unknown --distribution {distribution!r}; choose one of '
                        f'{", ".join(experiment.DISTRIBUTIONS)}')
    cluster.check_distribution(task, distribution)


def _hparam_overrides(options):
    """{key: value string} of --hparams and the flags that set an hparam."""
    overrides = hparams.parse_overrides(options.hparams)
    for name in HPARAM_FLAGS:
        if getattr(options, name) is not None:
            overrides[name] = str(getattr(options, name))
    return overrides


def _check_flags(options):
    """The flags that mean the same to every model."""
    for name in ('train_steps', 'checkpoint_every'):
        value = getattr(options, name)
        if value is not None and value <= 0:
            raise UserError(f'--{name} must be positive, got {value}')
    if options.save_every_secs < 0:
        raise UserError(f'--save_every_secs must be 0 (off) or more, got {options.save_every_secs}')
    if options.warm_start_from:
        warm_start.checkpoint_path(options.warm_start_from)
    _check_export_formats(options.export_formats)


def _check_export_formats(formats):
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise UserError(f'--export_formats: unknown format {unknown[0]} ({", ".join(EXPORT_FORMATS)})')
    if 'saved_model' not in formats:
        raise UserError('--export_formats must list saved_model: an ONNX file is verified against it')
    if 'onnx' in formats:
        onnx_export.check_available()


def _precision(resolved, task):
    return experiment.training_precision(resolved, task) if 'precision' in resolved else None


def _profile_steps(text, train_steps):
    return monitoring.parse_profile_steps(text, train_steps) if text else None


def _warm_start(options):
    if not options.warm_start_from:
        return None
    return WarmStart(options.warm_start_from, options.warm_start_vars, options.forget_bias)
