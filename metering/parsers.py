"""The API's JSON parser and the ingestion endpoint's renderer.

The parser is DRF's, with too-deeply nested bodies answered 400, not 500. The renderer is DRF's
with msgspec doing the encoding: an ingestion response lists up to 1,000 statuses, which the
standard library's encoder renders several times slower.
"""

from __future__ import annotations

import msgspec
from rest_framework import exceptions, parsers, renderers


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply") from None


# Compact UTF-8, as DRF's own output (COMPACT_JSON, UNICODE_JSON); Decimals as numbers.
_ENCODER = msgspec.json.Encoder(decimal_format="number")


class FastJSONRenderer(renderers.JSONRenderer):
    """DRF's JSON renderer, encoding with msgspec; anything msgspec does not take (or an
    indented rendering asked for in the Accept header) goes through DRF's own encoder."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        if self.get_indent(accepted_media_type, renderer_context or {}) is None:
            try:
                return _ENCODER.encode(data)
            except (TypeError, ValueError, OverflowError):
                pass
        return super().render(data, accepted_media_type, renderer_context)
