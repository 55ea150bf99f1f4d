"""bin/convert_checkpoint: a TF1 LSTMCell/GRUCell checkpoint rewritten as one that
bin/train --warm_start_from takes."""

import shlex

from absl import flags

from estimator_models.legacy import tf1_checkpoints, warm_start
from estimator_models.running.cli.command import Command, require
from estimator_models.running.cli.flag_groups import FORGET_BIAS, FlagGroup, flag

CHECKPOINT = FlagGroup('checkpoint', (
    flag(flags.DEFINE_string, 'from', None,
         'A TF1 checkpoint (prefix or directory) of LSTMCell, BasicLSTMCell or GRUCell under '
         'dynamic_rnn, and a dense layer.'),
    flag(flags.DEFINE_string, 'to', None, 'Prefix of the converted checkpoint to write.'),
    FORGET_BIAS,
))


def run(options, argv):
    del argv
    require(options, 'from')
    require(options, 'to')
    source = warm_start.checkpoint_path(getattr(options, 'from'), '--from')
    path, mapping = tf1_checkpoints.convert_checkpoint(source, options.to, options.forget_bias)
    print('\n'.join(tf1_checkpoints.describe(mapping)))
    print(f'wrote {path} (train from it with --warm_start_from={shlex.quote(path)})')


COMMAND = Command(
    summary='converts a TF1 LSTMCell/GRUCell checkpoint into one that bin/train --warm_start_from takes.',
    examples=('--from=old_model/model.ckpt-10000 --to=converted/model.ckpt',
              '--from=old_model/ --to=converted/model.ckpt --forget_bias=0'),
    flag_groups=(CHECKPOINT,),
    run=run)
