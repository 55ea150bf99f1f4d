"""A result as JSON: one line on stdout, and with --json_out an indented file too."""

import json

from absl import flags

from estimator_models.running.cli.flag_groups import FlagGroup, flag

OUTPUT = FlagGroup('output', (flag(flags.DEFINE_string, 'json_out', None,
                                   'Also write the result as JSON to this file.'),))


def report(result, json_out=None):
    """Prints `result` as one line of JSON; writes it to the file `json_out` unless None."""
    print(json.dumps(result, sort_keys=True))
    write(result, json_out)


def write(result, json_out):
    """Writes `result` as indented JSON to the file `json_out` unless None."""
    if json_out:
        with open(json_out, 'w') as stream:
            json.dump(result, stream, indent=2, sort_keys=True)
