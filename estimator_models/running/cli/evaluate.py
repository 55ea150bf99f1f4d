"""bin/evaluate: the metrics of a trained model_dir's latest checkpoint, as one line of JSON."""

from absl import flags

from estimator_models.running import experiment
from estimator_models.running.cli import json_output
from estimator_models.running.cli.command import Command, require
from estimator_models.running.cli.flag_groups import TRAINED_MODEL_DIR, FlagGroup, data_group, flag

RUN = FlagGroup('run', (
    TRAINED_MODEL_DIR,
    flag(flags.DEFINE_integer, 'steps', None, 'Batches to evaluate; default: all of the data.'),
))
DATA = data_group("Data to evaluate on; default: the run's eval data")


def run(options, argv):
    del argv
    require(options, 'model_dir')
    trained = experiment.load_run(options.model_dir)
    if options.data_dir:
        trained.data_dir = options.data_dir
    json_output.report(experiment.evaluate(trained, trained.evaluation_source(options.data), options.steps))


COMMAND = Command(
    summary="evaluates a trained model_dir's latest checkpoint; prints its metrics as one line of JSON.",
    examples=('--model_dir=runs/cnn_lstm', '--model_dir=runs/cnn_lstm --data=more_digits.npz --steps=10'),
    flag_groups=(RUN, DATA),
    run=run)
