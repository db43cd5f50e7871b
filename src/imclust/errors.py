"""User-facing errors.

A :class:`UserError` is a mistake in what the user gave us (a path, a flag, a file). The CLI prints its
message as one line and exits non-zero, never with a traceback. Messages say what is wrong, where, and
what to do.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one clear line."""

    exit_code = 2


class InvalidInputError(UserError, ValueError):
    """A value handed to a component is unusable: an array of the wrong shape, with NaN, too few rows or the
    wrong number of features, or a parameter out of range. Printed in one line like any UserError, and a
    ValueError, as scikit-learn's estimators raise for bad input."""


class NotInstalledError(UserError):
    """An optional dependency was asked for explicitly but is not installed."""

    def __init__(self, package: str, feature: str, extra: str | None = None):
        hint = f"pip install 'imclust[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the optional package '{package}', which is not installed; run: {hint}")
