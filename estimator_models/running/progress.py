"""Progress lines a person reads while a job runs: training rate and ETA, eval results."""

import time

import tensorflow as tf

from estimator_models.serving import exporting
from input_fns.progress import duration


class TrainProgressHook(tf.compat.v1.train.SessionRunHook):
    """Prints `step N/M  loss L  S steps/s  ETA T` every `every_secs` seconds.

    The rate is averaged since the first step, so the pauses for evaluation and
    checkpoints count in the ETA without making one line swing wildly.
    """

    def __init__(self, loss, train_steps, every_secs=10.0):
        self._loss = loss
        self._train_steps = train_steps
        self._every_secs = every_secs

    def begin(self):
        self._global_step = tf.compat.v1.train.get_global_step()
        self._start_time = self._start_step = self._last_time = None

    def before_run(self, run_context):
        return tf.compat.v1.train.SessionRunArgs([self._global_step, self._loss])

    def after_run(self, run_context, run_values):
        step, loss = run_values.results
        now = time.time()
        if self._last_time is None:
            self._start_time = self._last_time = now
            self._start_step = step
            print(f'step {step + 1}/{self._train_steps}  loss {loss:.4f}', flush=True)
            return
        if now - self._last_time < self._every_secs and step + 1 < self._train_steps:
            return
        rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
        eta = (self._train_steps - step - 1) / rate if rate > 0 else float('inf')
        print(f'step {step + 1}/{self._train_steps}  loss {loss:.4f}  {rate:.1f} steps/s  '
              f'ETA {duration(eta) if eta != float("inf") else "?"}', flush=True)
        self._last_time = now


class EvalReporter(tf.estimator.Exporter):
    """An exporter that exports nothing: it prints each evaluation's result as it ends.

    train_and_evaluate hands every eval result to the exporters, which makes this the
    one place that sees them all without re-reading event files.
    """

    @property
    def name(self):
        return 'eval_reporter'

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        print(format_eval_result(eval_result), flush=True)
        return None


def format_eval_result(eval_result):
    eval_result = exporting.numbers_only(eval_result)
    shown = [f'{key} {eval_result[key]:.4f}' for key in sorted(eval_result)
             if key not in ('global_step', 'num_examples')]
    return (f'eval at step {eval_result["global_step"]} on {eval_result.get("num_examples", "?")} '
            f'examples: ' + '  '.join(shown))
