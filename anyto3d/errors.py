"""Errors that mean "the user's input or setup is wrong", as opposed to a bug.

The CLI turns an :class:`InputError` into one line on stderr and exit status 2, with no
traceback; anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input or configuration the user can fix: one clear message, exit status 2."""

    exit_code = 2


class EmptyGeometryError(InputError):
    """An isosurface/mesh extraction found no surface (e.g. the density never crosses the threshold)."""


class NonFiniteError(InputError):
    """A field or mesh contains NaN/Inf values."""


class MissingWeightsError(InputError):
    """A paper model's weights are not on this machine (nothing is ever downloaded)."""
