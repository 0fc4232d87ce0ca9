"""JSON answers rendered by orjson: the predictions route returns up to 1,000 score
maps, where the standard library's encoder costs milliseconds."""

from __future__ import annotations

import orjson
from starlette.responses import JSONResponse


class FastJSON(JSONResponse):
    def render(self, content) -> bytes:
        return orjson.dumps(content)
