"""TensorFlow's own log lines: off the terminal unless --verbosity asks for them.

Without --verbosity a command shows its own lines and, for a mistake, one `error:` line,
whatever TF_CPP_MIN_LOG_LEVEL the environment holds. --verbosity (-v) takes absl's levels
(-2 error, -1 warning, 0 info, 1 debug) and sets TensorFlow's Python logger, absl's, and
TensorFlow's C++ log level (TF_CPP_MIN_LOG_LEVEL) to match.

TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, while it is imported, so a process sets it
from its command line before that (estimator_models.running.launch). This module imports
no TensorFlow for that reason.
"""

import logging
import os
import warnings

from absl import flags
from absl import logging as absl_logging

CPP_LEVEL_ENV = 'TF_CPP_MIN_LOG_LEVEL'
# Hides INFO, WARNING and ERROR lines: the errors that end a command reach the user as
# its one `error:` line.
QUIET_CPP_LEVEL = 3
VERBOSITY_HELP = ("Show TensorFlow's own log lines on stderr: -2 errors, -1 and warnings, 0 and info, "
                  "1 and debug (absl's levels; TF_CPP_MIN_LOG_LEVEL is set to match). Without it only "
                  "this project's lines show, whatever TF_CPP_MIN_LOG_LEVEL holds.")


def define_verbosity(flag_values):
    """Defines --verbosity (-v) on `flag_values`, unless absl's is there: absl's FLAGS, which
    a bin/ process parses into, hold absl's own, of the same name, short name and levels."""
    if 'verbosity' not in flag_values:
        flags.DEFINE_integer('verbosity', None, VERBOSITY_HELP, short_name='v', flag_values=flag_values)


def given_verbosity(flag_values):
    """The --verbosity given on the command line parsed into `flag_values`, or None."""
    verbosity = flag_values['verbosity']
    return verbosity.value if verbosity.present else None


def verbosity_in(argv):
    """The --verbosity of a command line (`argv` without the program), read as absl reads
    it, before the command's own flags exist; None when it is absent or not a number (the
    command's own parse then reports it)."""
    scratch = flags.FlagValues()
    define_verbosity(scratch)
    try:
        scratch(['', *argv], known_only=True)
    except flags.Error:
        return None
    return given_verbosity(scratch)


def set_cpp_level(verbosity):
    """TF_CPP_MIN_LOG_LEVEL for `verbosity` (None: quiet), for a TensorFlow imported after."""
    level = QUIET_CPP_LEVEL if verbosity is None else min(max(-verbosity, 0), QUIET_CPP_LEVEL)
    os.environ[CPP_LEVEL_ENV] = str(level)


def set_python_levels(verbosity):
    """TensorFlow's and absl's Python loggers at `verbosity`; None: errors only, and none of
    the deprecation notices TensorFlow and TF1 layers print."""
    # Imported here, not above: this module is read before TensorFlow is imported.
    from tensorflow.python.util import deprecation  # pylint: disable=g-import-not-at-top
    deprecation._PRINT_DEPRECATION_WARNINGS = verbosity is not None  # pylint: disable=protected-access
    if verbosity is None:
        _ignore_warnings_users_cannot_act_on()
    absl_verbosity = absl_logging.ERROR if verbosity is None else verbosity
    tensorflow_logger = logging.getLogger('tensorflow')
    tensorflow_logger.setLevel(absl_logging.converter.absl_to_standard(absl_verbosity))
    _through_absl_handler_only(tensorflow_logger)
    absl_logging.set_verbosity(absl_verbosity)


def _through_absl_handler_only(tensorflow_logger):
    """In an absl program (a bin/ process) absl's handler on the root logger writes
    TensorFlow's lines; the handler TensorFlow gave its own logger, imported before absl's
    was installed, would write each a second time."""
    if absl_logging.get_absl_handler() in logging.getLogger().handlers:
        for handler in list(tensorflow_logger.handlers):
            tensorflow_logger.removeHandler(handler)


def _ignore_warnings_users_cannot_act_on():
    # TF1 layers and cells in a user's model_fn each warn that they are deprecated.
    warnings.filterwarnings('ignore', message='.*is deprecated and will be removed', category=UserWarning)
    # tf.data's note on options under a tf.distribute strategy, printed once per worker.
    warnings.filterwarnings('ignore', message='To make it possible to preserve tf.data options')
