"""What each module of this package gives for its bin/ command."""

import dataclasses
from typing import Callable

from estimator_models.errors import UserError
from estimator_models.running.cli.flag_groups import LOGGING


@dataclasses.dataclass(frozen=True)
class Command:
    """bin/<name>: the lines that open its --help, its flags, and what it does.

    summary: one line on what it does.
    examples: two command lines that use it.
    flag_groups: its FlagGroups, in the order --help shows them (--verbosity's follows).
    run: run(options, argv) with the parsed flags and the remaining arguments.
    takes_arguments: whether it takes positional arguments (bin/launch_local_cluster passes
      what follows -- on to bin/train).
    """
    summary: str
    examples: tuple
    flag_groups: tuple
    run: Callable
    takes_arguments: bool = False

    @property
    def groups(self):
        return (*self.flag_groups, LOGGING)

    def define_flags(self, flag_values):
        for group in self.groups:
            group.define(flag_values)


def require(options, name):
    if getattr(options, name) is None:
        raise UserError(f'--{name} is required')
