"""All JSON encoding and decoding goes through here (orjson). Part of the compiled core (:mod:`worker.corebuild`):
the core encodes every state it writes through :func:`dumps`, and an interpreted function called from compiled code
is where the interpreter hands its lock to another thread in the middle of a batch."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

_OPTS = orjson.OPT_SERIALIZE_NUMPY


def dumps(obj: Any) -> bytes:
    """Encode to compact JSON bytes (numpy scalars and arrays allowed)."""
    return orjson.dumps(obj, option=_OPTS)


def dumps_pretty(obj: Any) -> bytes:
    return orjson.dumps(obj, option=_OPTS | orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


# Decode JSON; raises :data:`JSONDecodeError` (a ``ValueError``) on bad input. orjson's own function, not a wrapper:
# it runs once per consumed record, and a Python call around it costs a tenth of the decode.
loads = orjson.loads
