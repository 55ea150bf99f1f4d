"""The one exception type that means "the user asked for something that cannot work",
how to read the reason out of a TensorFlow error, and the valid names closest to a misspelt one.

It imports nothing of the project, so that every package may use it.
"""

import difflib
import re


class UserError(Exception):
    """Bad input from the user: reported as one line and a non-zero exit, never a traceback."""


# A failed tf.debugging.Assert reports its data as `assertion failed: [TEXT]` in graphs
# and as `Summarized data: b'TEXT'` when run eagerly.
_ASSERTION = re.compile(r"assertion failed: \[(.*?)\]\s*$|Summarized data: b'(.*)'\s*$", re.MULTILINE)


def assertion_text(message):
    """The text a failed tf.debugging.Assert carried, found in a TensorFlow error message,
    or None when the error is not such an assertion."""
    match = _ASSERTION.search(message)
    return None if match is None else match.group(1) or match.group(2)


def with_closest(name, candidates, listing):
    """`listing` (e.g. 'choose one of a, b, c'), led by the candidates closest to `name`
    when any is close: 'did you mean a? (choose one of a, b, c)'."""
    closest = difflib.get_close_matches(name, candidates)
    if not closest:
        return listing
    return f'did you mean {" or ".join(closest)}? ({listing})'
