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
  except SystemExit as error:
    # absl's --help, --helpshort, --helpfull and --helpxml print the usage
    # and exit with status 1, but a request for help is a success.
    sys.exit(0 if error.code == 1 else error.code)
  except flags.Error as error:
    fail(f'{first_line(error)} (see --help)')
  except InputError as error:
    fail(first_line(error))
  except (KeyError, AttributeError) as error:
    # config_flags raises these for an override of a field that the config
    # lacks, and AttributeError for a config file without get_config().
    field = _missing_field(error)
    if field is None:
      fail(f'could not load the config: {first_line(error)}')
    fail(_unknown_field_message(field, argv))
  except (OSError, ImportError, SyntaxError) as error:
    # Raised by config_flags while it loads a config file.
    fail(f'could not load the config: {_load_error_text(error)}')
  return []


def load_config(config_flag: flags.FlagHolder):
  """Return the value of a config_flags flag, or fail if its file did not load.

  config_flags (ml_collections 1.1) stores the error of a config file that
  does not load, such as a missing file, and raises it as OSError only when
  the config is first read.
  """
  config = config_flag.value
  try:
    getattr(config, 'lock', None)
  except OSError as error:
    fail(
      f'could not load --{config_flag.name}: {_load_error_text(error)}; pass '
      'the path of a config file, such as configs/synthetic.py.'
    )
  return config


def _load_error_text(error: BaseException) -> str:
  """Return the last line of a config load error, the one naming the cause."""
  cause = error.__cause__ or error
  lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
  return lines[-1] if lines else type(cause).__name__


def _missing_field(error: BaseException) -> str | None:
  """Return the name in ConfigDict's KeyError, or None for other errors."""
  if isinstance(error, AttributeError) and error.args:
    error = error.args[0]
  if not isinstance(error, KeyError) or not error.args:
    return None
  # ConfigDict's key is already quoted and may be followed by a line with
  # a suggestion: "'stpes'\nDid you mean "steps" instead of "stpes"?".
  return str(error.args[0])


def _unknown_field_message(field: str, argv: list[str]) -> str:
  lines = field.strip().splitlines()
  name = lines[0].strip('\'"')
  hint = f' {lines[1]}' if len(lines) > 1 else ''
  for arg in argv[1:]:
    flag_name = arg.split('=', 1)[0]
    if arg.startswith('-') and name in flag_name.split('.')[1:]:
      return (
        f'{flag_name}: the config has no field {name!r}.{hint} Check the '
        'field names in the config file.'
      )
  return f'the config has no field {name!r}.{hint}'


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
