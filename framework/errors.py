"""The project's error types: each message names the problem and the fix."""


class EditError(Exception):
    """Base class of the project's errors."""


class ConfigError(EditError, ValueError):
    """A configuration value is out of range or inconsistent."""


class ManifestError(EditError, ValueError):
    """An edit request (manifest row, image, condition map, mask) cannot be used."""


class ModelLoadError(EditError, OSError):
    """A model folder or hub id cannot be loaded."""
