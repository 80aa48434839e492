"""Shared command-line behaviour: flag errors, exit codes, one-line messages.

Exit codes: 0 success, 2 bad input or usage, 1 internal error. Bad input is
reported as one line on stderr with no traceback.
"""

import contextlib
import logging as std_logging
import sys

from absl import flags, logging

from cganjax.errors import InputError

USAGE_EXIT = 2
INTERNAL_EXIT = 1


def fail(message: str, code: int = USAGE_EXIT) -> None:
  program = sys.argv[0].rsplit('/', 1)[-1] if sys.argv else 'cganjax'
  if program in ('__main__.py', '-m', '-c', ''):
    program = 'cganjax'
  print(f'{program}: error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
  """Parse absl flags, turning a flag error into a one-line usage error."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    fail(f'{first_line(error)} (see --help)')
  except InputError as error:
    fail(first_line(error))
  except (FileNotFoundError, ImportError, SyntaxError, AttributeError) as error:
    # Raised by config_flags while it loads a config file.
    fail(f'could not load the config: {first_line(error)}')
  return []


class _LibraryInfoFilter(std_logging.Filter):
  """Drop INFO records of Orbax, which logs every phase of every save."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    from_orbax = '/orbax/' in record.pathname
    return not from_orbax or record.levelno >= std_logging.WARNING


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())


def reject_extra_arguments(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; every option is a --flag.')


@contextlib.contextmanager
def report_errors(extra_internal: tuple[type[BaseException], ...] = ()):
  """Report InputError as a usage error (exit 2) and `extra_internal` as 1."""
  try:
    yield
  except InputError as error:
    logging.flush()
    fail(first_line(error), USAGE_EXIT)
  except extra_internal as error:
    logging.flush()
    fail(first_line(error), INTERNAL_EXIT)
