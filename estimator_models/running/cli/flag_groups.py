"""Flags in the groups that --help shows them under. A flag that several commands take is
defined here once; where a flag means something of its own to each command (what --data
is read for, what --model is), the command gives that part of its help and the group adds
the rest."""

import dataclasses
import functools

from absl import flags

from estimator_models.running import tensorflow_logs


def flag(define, name, default, help_text, **options):
    """One flag: absl's `define` (flags.DEFINE_string, ...) with its arguments, to be called
    with the FlagValues to define it on."""
    return functools.partial(define, name=name, default=default, help=help_text, **options)


@dataclasses.dataclass(frozen=True)
class FlagGroup:
    """Flags under one heading of --help; `definitions` are callables taking flag_values=."""
    heading: str
    definitions: tuple

    def define(self, flag_values):
        for definition in self.definitions:
            definition(flag_values=flag_values)

    def defined_flags(self):
        """absl's Flag objects of the group, in the order of its definitions."""
        flag_values = flags.FlagValues()
        self.define(flag_values)
        # A FlagValues lists a flag under its short name too.
        return [flag_values[name] for name in flag_values if flag_values[name].name == name]


DATA_SPEC_FORMS = ('NAME (embedded or TFDS), tfds:NAME[/CONFIG][:SPLIT], FILE.npz, DIR/ of class '
                   "folders or 'PATTERN.tfrecord*'")
DATA_DIR = flag(flags.DEFINE_string, 'data_dir', None,
                'Where TFDS datasets are prepared, the embedded ones included; default: the one a '
                'trained model_dir recorded, else $TFDS_DATA_DIR or ~/tensorflow_datasets.')
HPARAMS = flag(flags.DEFINE_string, 'hparams', '',
               'Hparam overrides: key=value,key=value (lists as [a,b]); docs/hparams.md lists them.')
TRAINED_MODEL_DIR = flag(flags.DEFINE_string, 'model_dir', None, 'A model_dir that bin/train trained.')
SAVED_MODEL = flag(flags.DEFINE_string, 'saved_model', None,
                   'A SavedModel directory, or a base directory of versions (the highest is used).')
FORGET_BIAS = flag(flags.DEFINE_float, 'forget_bias', 1.0,
                   'forget_bias of the TF1 LSTMCell whose checkpoint is converted (folded into the bias).')
LOGGING = FlagGroup('logging', (tensorflow_logs.define_verbosity,))


def data_group(data_help, *others):
    """'data': --data (`data_help` says what the command reads it for, and its default), the
    flags `others`, and --data_dir."""
    data = flag(flags.DEFINE_string, 'data', None, f'{data_help}. A data spec: {DATA_SPEC_FORMS}.')
    return FlagGroup('data', (data, *others, DATA_DIR))


def model_group(model_help, *others):
    """'model': --model (`model_help` says what the command does with it), --hparams and the
    flags `others`."""
    return FlagGroup('model', (flag(flags.DEFINE_string, 'model', None, model_help), HPARAMS, *others))
