"""The project's error and warning types: each message names the problem and the fix."""

import warnings


class EditError(Exception):
    """Base class of the project's errors."""


class ConfigError(EditError, ValueError):
    """A configuration value is out of range or inconsistent."""


class ManifestError(EditError, ValueError):
    """An edit request (manifest row, image, condition map, mask) cannot be used."""


class ModelLoadError(EditError, OSError):
    """A model folder or hub id cannot be loaded."""


def edit_error_in(err: BaseException):
    """The project's own error behind `err`, or None: jsonargparse and Lightning wrap errors raised inside them."""
    seen, stack = set(), [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, EditError):
            return current
        stack += [current.__cause__, current.__context__]
    return None


class EditWarning(UserWarning):
    """A warning of the project's own: the CLI prints it as one `warning: ...` line (no file path or source echo)
    and keeps it in the run's log; other code's warnings keep Python's form."""


class EditNote(EditWarning):
    """Something the run does differently from what was written, said as `note: ...` (not a problem by itself)."""


def warn(message: str, category: type[EditWarning] = EditWarning) -> None:
    """Emit one of the project's warnings (a `warnings.warn`, so callers and tests can filter or record it)."""
    warnings.warn(message, category, stacklevel=2)


def note(message: str) -> None:
    """Emit a note: `warn` with the EditNote category."""
    warnings.warn(message, EditNote, stacklevel=2)
