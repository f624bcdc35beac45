"""The project's error types: each message names the problem and the fix."""


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
