"""BufferingWorker: when a request is complete, and the bounds on requests that never are."""
from __future__ import annotations

import re
import socket
import time
from urllib.parse import urlsplit

import pytest

from edgeoffload.serve import start_unit
from edgeoffload.units.buffered_worker import MAX_HEADER_BYTES, RequestEnd

GET = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (b"POST /infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n")
TRAILERS = (b"POST /infer HTTP/1.1\r\nHost: x\r\ntransfer-encoding: Chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\nX-Sum: 1\r\n\r\n")


def first_complete(request: bytes, max_bytes: int = 1 << 20) -> int:
    """How many bytes, fed one at a time, RequestEnd needs before it calls the request complete."""
    end = RequestEnd(max_bytes)
    for size in range(1, len(request) + 1):
        if end.complete(request[:size]):
            return size
    return -1


@pytest.mark.parametrize("request_bytes", [GET, POST, CHUNKED, TRAILERS], ids=["get", "length", "chunked", "trailers"])
def test_a_request_is_complete_exactly_at_its_last_byte(request_bytes: bytes) -> None:
    assert first_complete(request_bytes) == len(request_bytes)


def test_a_request_arriving_in_one_piece_is_complete() -> None:
    assert RequestEnd(1 << 20).complete(CHUNKED) and RequestEnd(1 << 20).complete(POST)


def test_requests_the_app_will_refuse_are_handed_over_without_waiting() -> None:
    too_long = b"POST /infer HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"
    assert first_complete(too_long, max_bytes=1000) == len(too_long)  # 413 straight from the headers
    bad_length = b"POST /infer HTTP/1.1\r\nContent-Length: -1\r\n\r\n"
    assert first_complete(bad_length) == len(bad_length)
    bad_chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    assert first_complete(bad_chunk) == len(bad_chunk)
    assert RequestEnd(100).complete(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"ff\r\n" + b"a" * 120)
    assert RequestEnd(1 << 30).complete(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEADER_BYTES)


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, from a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.fixture(scope="module")
def unit():
    """One thread only: anything that held it would block every other request."""
    with start_unit("inference", env={"INFER_KIND": "haar-face", "READ_TIMEOUT_S": "2", "READ_BUFFER_MB": "1",
                                      "INFER_MAX_BODY_BYTES": "100000"}, threads=1) as running:
        yield running


def test_a_request_that_does_not_arrive_in_time_gets_408_and_is_closed(unit) -> None:
    with _connect(unit.url) as sock:
        sock.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert 1.5 < time.monotonic() - started < 5


def test_one_thread_serves_others_while_a_client_holds_a_half_sent_request(unit) -> None:
    with _connect(unit.url) as slow, _connect(unit.url) as other:
        slow.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n")
        other.sendall(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert _read_all(other).startswith(b"HTTP/1.1 200 ")


def test_a_chunked_body_over_the_limit_gets_413(unit) -> None:
    chunk = b"a" * 50_000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    with _connect(unit.url) as sock:
        sock.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nConnection: close\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + body)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"exceeds 100000 bytes" in answer


def test_requests_beyond_the_buffer_budget_wait_and_then_complete(unit) -> None:
    """READ_BUFFER_MB=1: a stalled 900 KB upload fills the budget; a second upload waits for room,
    which comes when the first times out, and is then answered."""
    head = b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    with _connect(unit.url) as stalled:
        stalled.sendall(head % 1_000_000 + b"a" * 900_000)
        time.sleep(1.2)  # the read timeout runs from the connection, checked once a second: this one expires first
        waiting = _connect(unit.url)
        started = time.monotonic()
        waiting.sendall(head % 300_000 + b"b" * 300_000)
        answer = _read_all(waiting)
        waited = time.monotonic() - started
        waiting.close()
        assert _read_all(stalled).startswith(b"HTTP/1.1 408 ")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]  # the app's answer: the whole request arrived
    assert waited > 0.3  # it was held back until the stalled request's bytes were let go


def test_a_client_expecting_100_continue_gets_it_before_sending_its_body(unit) -> None:
    with _connect(unit.url) as sock:
        sock.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nConnection: close\r\n"
                     b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"abcd")
        assert b"HTTP/1.1 400 " in _read_all(sock)  # not an image: the app's answer


def test_a_pipelined_request_still_arriving_does_not_hold_the_thread(unit) -> None:
    """A complete request with the start of the next one behind it (pipelining): the leftover
    bytes go back through the event loop's completeness check, not to a thread that would block
    reading the rest. With one thread, another client is then still served; the pipelined
    request is answered once complete."""
    with _connect(unit.url) as pipelined:
        pipelined.sendall(GET + GET[:20])   # one segment: the worker reads both at once
        assert _read_response(pipelined).startswith(b"HTTP/1.1 200 ")
        with _connect(unit.url) as other:
            other.settimeout(1.5)
            other.sendall(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            assert _read_all(other).startswith(b"HTTP/1.1 200 ")
        pipelined.sendall(GET[20:].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert _read_all(pipelined).startswith(b"HTTP/1.1 200 ")


def test_a_pipelined_request_that_never_completes_times_out(unit) -> None:
    with _connect(unit.url) as pipelined:
        pipelined.sendall(GET + GET[:20])
        answers = _read_all(pipelined)
    assert answers.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in answers
