"""bin/make_tfrecords: a data source written as TFRecord shards and a metadata file."""

import shlex

from absl import flags

from estimator_models.errors import UserError
from estimator_models.running.cli.command import Command, require
from estimator_models.running.cli.flag_groups import DATA_DIR, DATA_SPEC_FORMS, FlagGroup, flag
from input_fns import specs, writing

DATA = FlagGroup('data', (
    flag(flags.DEFINE_string, 'input', None, f'Data to convert. A data spec: {DATA_SPEC_FORMS}.'),
    flag(flags.DEFINE_string, 'output', None,
         'Output prefix: writes PREFIX.tfrecord-00000-of-N ... and PREFIX.metadata.json.'),
    flag(flags.DEFINE_integer, 'shards', 1, 'Number of shard files.'),
    flag(flags.DEFINE_enum, 'split', 'train', 'Which split of a source that has two.',
         enum_values=['train', 'test']),
    DATA_DIR,
))


def run(options, argv):
    del argv
    require(options, 'input')
    require(options, 'output')
    if options.shards < 1:
        raise UserError(f'--shards must be positive, got {options.shards}')
    train, test = specs.open_splits(options.input, None, options.data_dir)
    if options.split == 'test' and test is None:
        raise UserError(f'{options.input} has no test split')
    data = test if options.split == 'test' else train
    summary = writing.source_to_tfrecords(data, options.output, options.shards)
    per_class = ', '.join(f'{name} {count}' for name, count in summary['per_class'].items())
    print(f'wrote {summary["examples"]} {data.info.kind}s of {summary["classes"]} classes '
          f'({per_class}) in {len(summary["shards"])} shards, {summary["bytes"] / 1e6:.1f} MB:\n'
          f'  {options.output}.tfrecord-*  (train with --data={shlex.quote(options.output + ".tfrecord*")})\n'
          f'  {summary["metadata"]}')


COMMAND = Command(
    summary='writes a data source as TFRecord shards and a metadata file, for --data to read.',
    examples=('--input=digits.npz --output=data/digits --shards=4',
              '--input=moving_glyphs --split=test --output=data/clips_test'),
    flag_groups=(DATA,),
    run=run)
