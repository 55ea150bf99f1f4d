"""The processes of the commands: bin/<name>, and lstm-<name> once the package is installed.

TensorFlow takes its C++ log level from the environment while it is imported, so the
level that --verbosity asks for (estimator_models.running.tensorflow_logs) is set from the
command line first, and only then is the command (estimator_models.running.cli) imported.
"""

import sys

from estimator_models.running import tensorflow_logs


def main(name):
    """Runs bin/<name> with this process's command line; its exit status ends the process."""
    tensorflow_logs.set_cpp_level(tensorflow_logs.verbosity_in(sys.argv[1:]))
    from estimator_models.running import cli  # pylint: disable=g-import-not-at-top
    cli.main(name)


def main_train():
    main('train')


def main_evaluate():
    main('evaluate')


def main_export():
    main('export')


def main_predict():
    main('predict')


def main_convert_checkpoint():
    main('convert_checkpoint')


def main_make_tfrecords():
    main('make_tfrecords')


def main_benchmark():
    main('benchmark')


def main_launch_local_cluster():
    main('launch_local_cluster')
