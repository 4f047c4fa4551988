"""Input bounds shared by every request model: strict JSON types, finite numbers, and
locations without control characters. A module of its own so that the spec and the hook
models (which the spec holds) both use them without importing each other."""

from __future__ import annotations

from pydantic import ConfigDict

# JSON numbers only: strict refuses "5", true and 5.5 for an int (lax pydantic takes them);
# allow_inf_nan refuses NaN and +-Infinity however they are spelled.
STRICT_FINITE = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

# A URI or path as the backends use it: bounded, no control characters (C0, DEL, C1),
# and never a lone surrogate (the pattern check refuses those: JSON cannot store them).
LOCATION_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
MAX_LOCATION_LENGTH = 2048

__all__ = ["LOCATION_PATTERN", "MAX_LOCATION_LENGTH", "STRICT_FINITE"]
