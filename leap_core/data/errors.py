"""DataError: the one error every data reader raises (its own module so that the readers import it directly,
never the package __init__ that re-exports them)."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing input data; the message names the file (and line / field where relevant)."""
