"""The command-line tools: one module per bin/<name> (its flags, its --help and what it
runs), the flag groups they share, and how each ends.

Every command reports a user's mistake as one `error: ...` line on stderr and exits 2.
`run` runs a command inside the calling process; `main` is a command's own process,
started by estimator_models.running.launch.
"""

import functools
import os
import sys

from estimator_models.running import tensorflow_logs

# Before TensorFlow is imported, for whoever imports this package without
# estimator_models.running.launch: TensorFlow's C++ start-up lines stay off the terminal.
os.environ.setdefault(tensorflow_logs.CPP_LEVEL_ENV, str(tensorflow_logs.QUIET_CPP_LEVEL))

from absl import app, flags  # noqa: E402

from estimator_models.running.cli import (  # noqa: E402
    benchmark, convert_checkpoint, evaluate, export, failures, launch_local_cluster, make_tfrecords,
    predict, train, usage)

FLAGS = flags.FLAGS
COMMANDS = {
    'train': train.COMMAND,
    'evaluate': evaluate.COMMAND,
    'export': export.COMMAND,
    'predict': predict.COMMAND,
    'convert_checkpoint': convert_checkpoint.COMMAND,
    'make_tfrecords': make_tfrecords.COMMAND,
    'benchmark': benchmark.COMMAND,
    'launch_local_cluster': launch_local_cluster.COMMAND,
}


def main(name):
    """The process of bin/<name>: absl parses its flags into the global FLAGS (so absl's own
    flags and --helpfull work as in any absl program) and the command's exit status ends
    the process."""
    command = COMMANDS[name]
    command.define_flags(FLAGS)
    app.run(lambda argv: failures.guarded(command, FLAGS, argv),
            flags_parser=functools.partial(_parse_flags, name))


def _parse_flags(name, argv):
    if usage.requested(argv[1:]):
        print(usage.text(name, COMMANDS[name]))
        sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as error:
        sys.exit(failures.fail(str(error)))


def run(name, argv):
    """Runs bin/<name> inside this process as its own process would and returns the exit
    status; `argv` is the command's arguments without the program name, the output goes to
    sys.stdout and sys.stderr. Each call parses into flags of its own, so any number of
    commands can run one after another in one process. TensorFlow's C++ log level is the
    one this process imported TensorFlow with, whatever --verbosity says."""
    command = COMMANDS[name]
    if usage.requested(argv):
        print(usage.text(name, command))
        return 0
    options = flags.FlagValues()
    command.define_flags(options)
    try:
        remaining = options([f'bin/{name}', *argv])
    except flags.Error as error:
        return failures.fail(str(error))
    try:
        failures.guarded(command, options, remaining)
    except SystemExit as stopped:
        return failures.exit_status(stopped.code)
    return 0
