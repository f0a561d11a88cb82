"""Errors a user can fix. Their message is one line that says what is wrong and what to do.

Entry points (API, CLI, widgets) let these through as they are: the CLI prints the message
and exits with status 2, the widgets show it as a notification.
"""

from __future__ import annotations

__all__ = ["EMDiffuseError", "ModelFileError", "InputError"]


class EMDiffuseError(ValueError):
    """A problem with what the user asked for (input, option, file)."""

    def __init__(self, message: str) -> None:
        # Keep it to one line whatever callers pass in.
        super().__init__(" ".join(str(message).split()))


class InputError(EMDiffuseError):
    """The image or volume cannot be processed as given."""


class ModelFileError(EMDiffuseError):
    """A model directory, archive or checkpoint is missing, unsafe, corrupt or incompatible."""
