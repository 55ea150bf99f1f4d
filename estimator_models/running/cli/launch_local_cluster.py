"""bin/launch_local_cluster: a TF_CONFIG cluster of bin/train processes on this machine
(estimator_models.running.local_cluster)."""

import sys

from absl import flags

from estimator_models.errors import UserError
from estimator_models.running import local_cluster
from estimator_models.running.cli.command import Command
from estimator_models.running.cli.flag_groups import FlagGroup, flag

CLUSTER = FlagGroup('cluster', (
    flag(flags.DEFINE_integer, 'workers', 1, 'Training processes: the chief and WORKERS-1 worker tasks.'),
    flag(flags.DEFINE_integer, 'ps', 0,
         'Parameter-server tasks (then bin/train runs in parameter-server mode; without, give '
         '--distribution=multi_worker_mirrored to bin/train when --workers > 1).'),
    flag(flags.DEFINE_bool, 'evaluator', False,
         'Also run an evaluator task: it evaluates each new checkpoint and writes the SavedModels.'),
    flag(flags.DEFINE_integer, 'max_restarts', 0,
         'Restart a failed chief, worker or evaluator this many times before stopping the cluster '
         "(as a cluster manager's restart policy would)."),
    flag(flags.DEFINE_integer, 'worker_grace_secs', local_cluster.WORKER_GRACE_SECS,
         'Seconds a worker may run on after the chief succeeded; then it is stopped and the '
         'cluster still succeeds (the run is the chief\'s checkpoints).'),
))


def run(options, argv):
    train_flags = argv[1:]
    if not train_flags:
        raise UserError('give the bin/train flags after --, e.g. -- --model=pixel_row_lstm')
    launched = local_cluster.LocalCluster(options.workers, options.ps, options.evaluator, train_flags,
                                          options.max_restarts, options.worker_grace_secs)
    sys.exit(launched.run())


COMMAND = Command(
    summary='runs a TF_CONFIG cluster of bin/train processes on this machine; bin/train flags follow --.',
    examples=('--workers=2 --ps=1 -- --model=pixel_row_lstm',
              '--workers=2 --evaluator -- --model=cnn_lstm --distribution=multi_worker_mirrored'),
    flag_groups=(CLUSTER,),
    run=run,
    takes_arguments=True)
