"""The round trip backup -> migrate -> rollback, proven with Hypothesis, and the oracles that judge it.

Modules: :mod:`.property` (one example in a rolled-back transaction, and the Hypothesis
property), :mod:`.shapes` (the tables as the catalog describes them, the generated user sets),
:mod:`.strategies` (values at the edges PostgreSQL accepts), :mod:`.dump` (loading users and
dumping every column as text), :mod:`.oracle` (the snapshot the gate and the CLI compare).
"""

from pytest_rolemig.roundtrip.dump import Dump, apply_edits, load, take_dump, update_row
from pytest_rolemig.roundtrip.property import (
    DEFAULT_EDGES,
    KNOWN_BUGS,
    MODES,
    Outcome,
    PropertyRuns,
    RoundTrip,
    RoundTripError,
    describe_users,
    property_settings,
    run_property,
    scratch_roundtrip,
)
from pytest_rolemig.roundtrip.shapes import empty_users, read_shape, read_table_shape

__all__ = ["DEFAULT_EDGES", "KNOWN_BUGS", "MODES", "Dump", "Outcome", "PropertyRuns", "RoundTrip", "RoundTripError",
           "apply_edits", "describe_users", "empty_users", "load", "property_settings", "read_shape",
           "read_table_shape", "run_property", "scratch_roundtrip", "take_dump", "update_row"]
