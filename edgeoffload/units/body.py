"""Reading a request body within a limit, whether it has a Content-Length or arrives chunked."""
from __future__ import annotations

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge


def read_body(limit: int) -> bytes:
    """The request body, at most `limit` bytes; 413 for more, also when it arrives chunked.

    A declared length was already checked against Flask's MAX_CONTENT_LENGTH. A chunked body
    has no length to check up front: read one byte past the limit to tell "too large" from
    "exactly at the limit", instead of cutting it silently."""
    if request.content_length is not None:
        return request.get_data(cache=False)
    data = request.environ["wsgi.input"].read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge(f"body exceeds {limit} bytes")
    return data
