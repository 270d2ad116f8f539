"""User-facing errors.

Anything a user can cause (bad flags, a corrupt file, a run that diverged) raises a
:class:`DalabError`. The CLI prints its message as one line on stderr and exits with
``exit_code``: 2 for bad input (the default), 1 for a runtime failure.
"""


class DalabError(Exception):
    """An error caused by input or environment, reported as one line."""

    exit_code = 2


class DataError(DalabError):
    """A data file or folder is missing, corrupt, tampered with or of the wrong kind."""


class CheckpointError(DalabError):
    """A checkpoint cannot be read or does not match what it should hold."""


class TrainingFailure(DalabError):
    """A run failed at run time (for example the loss became NaN)."""

    exit_code = 1


class DiskFullError(DalabError):
    """A file could not be written because the disk (or quota) is full."""

    exit_code = 1
