"""The one exception type that means "the user asked for something that cannot work"."""


class UserError(Exception):
    """Bad input from the user: reported as one line and a non-zero exit, never a traceback."""
