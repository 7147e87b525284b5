"""How server.py hands an answer to hypercorn: the app's chunks as they are (not joined) in
pieces of at most SEND_BYTES, each a view of its chunk, so a large /metrics body is not
copied whole on its way out; and a real server sends them back intact."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests
from test_http_server import serving

from statscache_exporter.server import SEND_BYTES, pieces

CHUNKS = [b"", b"a" * 10, bytes(range(256)) * (3 * SEND_BYTES // 256 + 7), b"", b"tail\n"]


def test_pieces_are_bounded_views_of_the_chunks_in_order() -> None:
    got = list(pieces(CHUNKS, SEND_BYTES))
    assert b"".join(got) == b"".join(CHUNKS)
    assert all(0 < len(p) <= SEND_BYTES for p in got)
    big = CHUNKS[2]
    views = [p for p in got if isinstance(p, memoryview)]
    assert len(views) == 4 and all(v.obj is big for v in views)  # no copy of the big chunk
    assert list(pieces([b""], SEND_BYTES)) == []


def test_an_answer_of_many_chunks_arrives_whole() -> None:
    body = b"".join(CHUNKS)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return list(CHUNKS)

    with serving(app) as server:
        r = requests.get(f"http://127.0.0.1:{server.port}/", timeout=30)
        assert r.status_code == 200 and r.content == body
        assert r.headers["Content-Length"] == str(len(body))
        head = requests.head(f"http://127.0.0.1:{server.port}/", timeout=30)
        assert head.status_code == 200 and head.content == b""
