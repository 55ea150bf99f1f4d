"""How a command ends when it cannot finish: a user's mistake as one `error: ...` line on
stderr and exit status 2, never a traceback."""

import re
import sys

import tensorflow as tf

from estimator_models.errors import UserError
from estimator_models.running import monitoring, tensorflow_logs
from input_fns.sources import source

USER_MISTAKE_EXIT = 2
# A run stopped by a NaN or infinite loss.
DIVERGED_EXIT = 3
INTERRUPTED_EXIT = 130


def guarded(command, options, argv):
    """Runs `command` (a Command) with its parsed flags, TensorFlow's Python loggers at the
    level its --verbosity asks for; its mistakes end in sys.exit with one error line."""
    tensorflow_logs.set_python_levels(tensorflow_logs.given_verbosity(options))
    if len(argv) > 1 and not command.takes_arguments:
        sys.exit(fail(f'unexpected arguments: {" ".join(argv[1:])}'))
    try:
        command.run(options, argv)
    except UserError as error:
        sys.exit(fail(str(error)))
    except tf.errors.OpError as error:
        sys.exit(fail(source.bad_record_message(error.message) or _op_error_line(error)))
    except monitoring.Diverged as error:
        sys.exit(fail(str(error), code=DIVERGED_EXIT))
    except OSError as error:
        # A disk that is full or read-only: what was written before stays as it was.
        sys.exit(fail(f'cannot write {error.filename or ""}: {error.strerror or error}'))
    except KeyboardInterrupt:
        sys.exit(fail('interrupted; checkpoints already written are kept', code=INTERRUPTED_EXIT))


def fail(message, code=USER_MISTAKE_EXIT):
    """Prints `message` as the one error line; returns the exit status `code`."""
    print(f'error: {message}', file=sys.stderr, flush=True)
    return code


def exit_status(code):
    """The process exit status that sys.exit(code) gives."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _op_error_line(error):
    message = first_line(error.message)
    if isinstance(error, tf.errors.PermissionDeniedError) or 'No space left on device' in message:
        # Checkpoints, events and exports are written under temporary names and renamed,
        # so what was written before is intact.
        return f'cannot write: {message}'
    return f'TensorFlow: {message}'


def first_line(message):
    """An OpError's message without the graph function it came from; for a session's
    "Graph execution error", the message after the traceback of the failing node."""
    lines = re.sub(r'^\{\{function_node [^}]*\}\}\s*', '', message.strip()).splitlines()
    node_lines = [index for index, line in enumerate(lines) if line.startswith('Node: ')]
    if lines[0].startswith('Graph execution error') and node_lines and node_lines[-1] + 1 < len(lines):
        return lines[node_lines[-1] + 1].strip()
    return lines[0]
