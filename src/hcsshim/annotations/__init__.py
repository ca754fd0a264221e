"""Annotation keys hcsshim honours, with typed parsing that fails loudly (see ``parse``)."""

from hcsshim.annotations.keys import *  # noqa: F403 - the keys are this package's vocabulary
from hcsshim.annotations.keys import EXPANSIONS, KNOWN, KNOWN_PREFIXES, V2_REJECTED
from hcsshim.annotations.parse import (
    AnnotationError,
    Annotations,
    expand_annotations,
    is_known,
    parse_bool,
    parse_choice,
    parse_csv_uint32,
    parse_csv_uint64,
    parse_guid,
    parse_int32,
    parse_optional_bool,
    parse_string,
    parse_uint32,
    parse_uint64,
    unknown_annotations,
)

__all__ = [
    "EXPANSIONS",
    "KNOWN",
    "KNOWN_PREFIXES",
    "V2_REJECTED",
    "AnnotationError",
    "Annotations",
    "expand_annotations",
    "is_known",
    "parse_bool",
    "parse_choice",
    "parse_csv_uint32",
    "parse_csv_uint64",
    "parse_guid",
    "parse_int32",
    "parse_optional_bool",
    "parse_string",
    "parse_uint32",
    "parse_uint64",
    "unknown_annotations",
]
