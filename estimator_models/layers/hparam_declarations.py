"""The declaration of an hparam: its name, default, the values it takes and what it does.

Plain Python without project imports, so that every package may declare the hparams of
its own code. estimator_models.running.hparams parses, checks and resumes a run's hparams
from the declarations; estimator_models.running.hparams_doc writes docs/hparams.md from them.
"""

import dataclasses
import math
from typing import Callable, Optional, Tuple, Union


@dataclasses.dataclass(frozen=True)
class Bound:
    """A range of numbers: whether it `admits` a number, how errors and docs word it, and
    the closed `interval` around it that TensorBoard's HParams tab is told."""
    admits: Callable[[float], bool]
    requirement: str  # completes "hparam NAME must ..."
    summary: str
    interval: Tuple[float, float]


POSITIVE = Bound(lambda number: number > 0, 'be positive', '> 0', (0.0, math.inf))
NON_NEGATIVE = Bound(lambda number: number >= 0, 'be 0 or more', '>= 0', (0.0, math.inf))
FRACTION = Bound(lambda number: 0 <= number < 1, 'lie in [0, 1)', 'in [0, 1)', (0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class HParam:
    """One hparam, declared once.

    Attributes:
      name: its key in --hparams, in a model_fn's params and in hparams.json.
      default: a bool, int, float or str, whose type its values take; or a tuple of
        ints, which declares a list of layer sizes (at least one, each positive).
      doc: one line: what it does.
      choices: the values it takes (a tuple), or None for any value of its type.
      bound: the range of a number (POSITIVE, NON_NEGATIVE or FRACTION), or None.
      resumable: whether a resumed run may change it; only hparams that leave the
        checkpoint's variables as they are may.
      from_data: 0 stands for the training data's value, filled in when the data is
        opened; the choices and bound apply to that value.
      details: longer notes below docs/hparams.md's table (why the default is what it
        is, what else it needs), or ''; line breaks and indents read as single spaces.
    """
    name: str
    default: Union[bool, int, float, str, Tuple[int, ...]]
    doc: str
    choices: Optional[tuple] = None
    bound: Optional[Bound] = None
    resumable: bool = False
    from_data: bool = False
    details: str = ''

    @property
    def lists_sizes(self):
        return isinstance(self.default, tuple)

    @property
    def default_value(self):
        """The default as a run's hparams hold it: a list of sizes as a new list."""
        return list(self.default) if self.lists_sizes else self.default

    @property
    def type_name(self):
        """'bool', 'int', 'float', 'str' or 'list of ints'."""
        return 'list of ints' if self.lists_sizes else type(self.default).__name__

    def check(self, value):
        """Raises ValueError, naming the hparam, unless it takes `value` (of its type)."""
        if self.choices is not None and value not in self.choices:
            allowed = ', '.join(str(choice) for choice in self.choices)
            raise ValueError(f'hparam {self.name}={value!r} must be one of {allowed}')
        if self.lists_sizes and (not value or min(value) <= 0):
            raise ValueError(f'hparam {self.name} must list positive sizes, got {value}')
        if self.bound is not None and not self.bound.admits(value):
            raise ValueError(f'hparam {self.name} must {self.bound.requirement}, got {value}')


def defaults_of(declarations):
    """{name: default value} of HParams, in their order."""
    return {declared.name: declared.default_value for declared in declarations}


def choices_of(declarations):
    """{name: allowed values} of the HParams that have choices."""
    return {declared.name: declared.choices for declared in declarations if declared.choices is not None}
