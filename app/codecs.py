"""orjson as a Faust codec: ``serializer="orjson"`` for records and topics."""

from __future__ import annotations

from typing import Any

import orjson
from faust.serializers import codecs


class OrjsonCodec(codecs.Codec):
    """Strict RFC 8259 JSON through orjson (NaN/Infinity are refused)."""

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


codecs.register("orjson", OrjsonCodec())
