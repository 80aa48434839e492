"""Exceptions that command-line tools report as bad input (exit code 2)."""


class InputError(ValueError):
  """Bad input or usage: a config value, a path or a flag that cannot work.

  Its message is one line naming the input and the fix.
  """
