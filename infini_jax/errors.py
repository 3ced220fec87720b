"""Errors in what a user gave: a flag, a config value, a file or folder.

A :class:`UserError` says what is wrong with which input and how to fix it. The command line
(``commands.entry.run``) prints it as one ``error: ...`` line and exits with status 2; any other
exception is a bug and keeps its traceback (status 1). Importable without gin, JAX or TensorFlow,
so configs and data readers raise it where they check their input.
"""

import re


class UserError(ValueError):
  """Bad input: the message names the input, the problem and the fix.

  A ``ValueError``, so callers that catch those (and tests that expect them) still do.
  """


def check_regex(pattern, where: str, gin_key: str) -> None:
  """Raises UserError unless ``pattern`` compiles; ``where`` names the setting in the message,
  ``gin_key`` the binding to fix."""
  try:
    re.compile(pattern)
  except (re.error, TypeError) as e:
    raise UserError(f"{where}: {pattern!r} is not a regular expression ({e}) "
                    f"(gin: {gin_key})") from None


SHOWN_NAMES = 16   # parameter names an error lists; more are counted, not listed


def check_matches(pattern: str, names: list[str], key: str, among: str, fix: str) -> None:
  """Raises UserError when the regex ``pattern`` matches none of ``names`` (parameter paths).

  The message names the setting ``key``, which parameters were searched (``among``, e.g. "of the
  model"), the first ``SHOWN_NAMES`` of ``names``, and ``fix``.
  """
  if not any(re.search(pattern, name) for name in names):
    shown = ", ".join(names[:SHOWN_NAMES]) + (
        f", ... ({len(names)} in all)" if len(names) > SHOWN_NAMES else "")
    raise UserError(f"{key}: {pattern!r} matches no parameter {among}; they are {shown}; {fix}")


def one_line(error: BaseException) -> str:
  """The message of ``error`` as one line.

  gin appends its context on lines of their own ("In call to configurable 'DataConfig' (...)",
  'In file "x.gin", line 3'): a config class becomes a prefix (it says whose field the message
  names; a function such as ``train`` says nothing the command did not), a file's line a suffix,
  and the rest of the context (the binding, which the message already names) is left out.
  """
  message, *context = str(error).split("\n  In ")
  message = " ".join(line.strip() for line in message.splitlines() if line.strip())
  # gin adds a context per configurable the error passed through, innermost first.
  configurables = [m.group(1) for part in context
                   if (m := re.match(r"call to configurable '([^']+)'", part))]
  if configurables and configurables[0][0].isupper() and not message.startswith(configurables[0]):
    message = f"{configurables[0]}: {message}"
  for part in context:
    if where := re.match(r'file "([^"]+)", line (\d+)', part):
      message += f" ({where.group(1)}, line {where.group(2)})"
  return message
