"""The one exception family that library code raises for user-facing problems.

Every message says what is wrong, where, and what to do; the CLI prints it as one line.
"""

__all__ = [
    "CmamilError",
    "InputError",
    "LockError",
    "OutputError",
    "PluginError",
    "TrainingError",
    "UnknownPluginError",
]


class CmamilError(Exception):
    """Base class of every error cmamil reports to a user as one line."""

    def __str__(self) -> str:
        text = super().__str__()
        # torch re-raises an error of a DataLoader worker with the worker's traceback as its message: keep the
        # original one line (the traceback's last line, "module.Type: message")
        if text.startswith("Caught ") and "\nOriginal Traceback" in text:
            return text.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
        return text


class InputError(CmamilError):
    """A file, folder, option or table given by the user cannot be used."""


class LockError(CmamilError):
    """Another process held a lock for longer than one was willing to wait."""


class OutputError(CmamilError):
    """An output cannot be written: the disk is full, the place is read-only, or the path is not a folder."""


class PluginError(CmamilError):
    """A plugin failed to import, to build, or does not meet its contract."""


class UnknownPluginError(PluginError):
    """A plugin name that no installed package registers."""


class TrainingError(CmamilError):
    """Training cannot go on (e.g. the loss diverged)."""
