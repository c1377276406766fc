"""proxy.upstream.http.reader without sockets: answers fed as bytes, whole or split
anywhere; property tests for split points, chunk sizes and malformed framing (hypothesis)."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.upstream.http.errors import BadResponse, ConnectionClosed, ResponseTooLarge
from proxy.upstream.http.reader import Response, ResponseReader

LIMIT = 1_048_576
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\n\r\nhello"


def read(
    pieces: bytes | Iterable[bytes], *, head: bool = False, limit: int = LIMIT, eof: bool = False
) -> tuple[Response, bool]:
    """Feed one answer to a fresh reader: the Response (exactly at the last piece, or at the
    close if `eof`) and the keep-alive flag."""
    reader = ResponseReader()
    return read_on(reader, pieces, head=head, limit=limit, eof=eof), reader.keep_alive


def read_on(
    reader: ResponseReader,
    pieces: bytes | Iterable[bytes],
    *,
    head: bool = False,
    limit: int = LIMIT,
    eof: bool = False,
) -> Response:
    reader.start(head=head, limit=limit)
    pieces = [pieces] if isinstance(pieces, bytes) else list(pieces)
    for piece in pieces[:-1]:
        assert reader.feed(piece) is None
    response = reader.feed(pieces[-1])
    if eof:
        assert response is None
        response = reader.feed_eof()
    assert response is not None
    return response


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body
        + b"0\r\n"
        + trailer
        + b"\r\n"
    )


def assert_ended(reader: ResponseReader) -> None:
    """After an error or a last answer the stream carries nothing more."""
    assert not reader.keep_alive
    with pytest.raises(BadResponse):
        reader.feed(OK)
    with pytest.raises(ConnectionClosed):
        reader.start(head=False, limit=LIMIT)
    with pytest.raises(ConnectionClosed):
        reader.feed_eof()


# --- complete answers ----------------------------------------------------------------------


def test_content_length_answer() -> None:
    response, keep_alive = read(OK)
    assert (response.status, response.body, keep_alive) == (200, b"hello", True)
    assert response.headers == (
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", "5"),
    )
    assert response.header("content-type") == "application/octet-stream"
    assert response.header("X-Missing", "-") == "-"


def test_chunked_answer_with_extensions_and_trailer() -> None:
    data = chunked(b"ab", b"c" * 300, b"d", trailer=b"X-Trailer: t\r\n")
    data = data.replace(b"2\r\nab", b'2;ext=1;name="v"\r\nab')
    response, keep_alive = read(data)
    assert (response.body, keep_alive) == (b"ab" + b"c" * 300 + b"d", True)
    assert response.header("X-Trailer") == "t"  # trailers come after the head's fields


def test_empty_chunked_and_zero_length_bodies() -> None:
    assert read(chunked())[0].body == b""
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == (
        Response(200, (("Content-Length", "0"),), b""),
        True,
    )


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.0 200 OK\r\n\r\nread until the server closes",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nread until the server closes",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nread until the server closes",
    ],
)
def test_body_until_close(data: bytes) -> None:
    response, keep_alive = read([data[:30], data[30:]], eof=True)
    assert (response.body, keep_alive) == (b"read until the server closes", False)


def test_until_close_with_no_body_bytes() -> None:
    response, _ = read(b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\n", eof=True)
    assert (response.status, response.body) == (500, b"")


@pytest.mark.parametrize(
    ("data", "keep_alive"),
    [
        (OK, True),
        (OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), False),
        (OK.replace(b"HTTP/1.1", b"HTTP/1.0"), False),
        (
            OK.replace(b"HTTP/1.1", b"HTTP/1.0").replace(
                b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n"
            ),
            True,
        ),
        (chunked(b"x"), True),
        (chunked(b"x").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1), False),
    ],
)
def test_keep_alive_flag(data: bytes, keep_alive: bool) -> None:
    assert read(data)[1] is keep_alive


def test_answers_in_sequence_on_one_reader() -> None:
    reader = ResponseReader()
    bodies = [read_on(reader, data).body for data in (OK, chunked(b"abc"), OK, chunked())]
    assert bodies == [b"hello", b"abc", b"hello", b""]
    assert reader.keep_alive


def test_head_answer_has_no_body_and_ends_the_stream() -> None:
    reader = ResponseReader()
    # Content-Length is the size a GET would get: above the limit, it is still no body.
    response = read_on(
        reader, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", head=True, limit=100
    )
    assert (response.status, response.body, response.header("Content-Length")) == (200, b"", "5000")
    assert_ended(reader)  # llhttp cannot be told the answer had no body: not reused


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_keep_the_stream(status: int) -> None:
    reader = ResponseReader()
    response = read_on(reader, b"HTTP/1.1 %d X\r\nContent-Length: 99\r\n\r\n" % status)
    assert (response.status, response.body, reader.keep_alive) == (status, b"", True)
    assert read_on(reader, OK).body == b"hello"  # the 99 were not taken as a body


def test_interim_answers_are_skipped() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n" + OK
    )
    response, keep_alive = read([data[:20], data[20:60], data[60:]])
    assert response == read(OK)[0] and keep_alive  # the final answer's head only


@pytest.mark.parametrize(
    ("data", "eof"),
    [
        (OK, False),
        (
            chunked(b"ab", b"cde", trailer=b"X-Trailer: t\r\n").replace(b"3\r\n", b"3;x=y\r\n"),
            False,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, False),
        (b"HTTP/1.0 200 OK\r\nX-A: b\r\n\r\nuntil close", True),
    ],
)
def test_one_byte_at_a_time(data: bytes, eof: bool) -> None:
    assert read([data[i : i + 1] for i in range(len(data))], eof=eof) == read(data, eof=eof)


# --- limits --------------------------------------------------------------------------------


def test_too_large_by_content_length_before_the_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n"
    assert read(head + b"x" * 100 + b"y", limit=101)[0].body == b"x" * 100 + b"y"
    reader = ResponseReader()
    reader.start(head=False, limit=100)
    with pytest.raises(ResponseTooLarge):
        reader.feed(head)  # refused at once, no wait for the body
    assert_ended(reader)


def test_too_large_by_chunked_growth() -> None:
    data = chunked(b"0123456789" * 5, b"0123456789" * 5, b"!")
    assert len(read(data, limit=101)[0].body) == 101
    reader = ResponseReader()
    reader.start(head=False, limit=100)
    with pytest.raises(ResponseTooLarge):
        reader.feed(data[: data.index(b"!") + 1])  # as soon as it passes, before the end
    assert_ended(reader)


def test_too_large_until_close() -> None:
    reader = ResponseReader()
    reader.start(head=False, limit=10)
    assert reader.feed(b"HTTP/1.0 200 OK\r\n\r\n0123456789") is None
    with pytest.raises(ResponseTooLarge):
        reader.feed(b"!")


# --- malformed answers, closes, bytes nobody asked for ------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/9.9 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nX-No-Colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX Space: v\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        chunked(b"hi").replace(b"2\r\n", b"zz\r\n"),
        chunked(b"hi").replace(b"hi\r\n", b"hiX"),
        chunked(b"hi").replace(b"2\r\n", b"fffffffffffffffffff\r\n"),
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
)
def test_malformed_answers_are_bad_responses(data: bytes) -> None:
    reader = ResponseReader()
    reader.start(head=False, limit=LIMIT)
    with pytest.raises(BadResponse):
        reader.feed(data)
    assert_ended(reader)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Len",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npartial",
        chunked(b"abc")[:-5],
        b"HTTP/1.1 100 Continue\r\n\r\n",
    ],
)
def test_close_before_the_end_is_connection_closed(data: bytes) -> None:
    reader = ResponseReader()
    reader.start(head=False, limit=LIMIT)
    assert data == b"" or reader.feed(data) is None
    with pytest.raises(ConnectionClosed):
        reader.feed_eof()
    assert_ended(reader)


@pytest.mark.parametrize("extra", [OK, b"GARBAGE"])
def test_pipelined_leftovers_end_the_stream(extra: bytes) -> None:
    reader = ResponseReader()
    assert read_on(reader, OK + extra).body == b"hello"  # the answer is still good
    assert_ended(reader)  # but what follows it was never asked for


def test_data_after_connection_close_ends_the_stream() -> None:
    reader = ResponseReader()
    data = OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    assert read_on(reader, data + b"junk").body == b"hello"
    assert_ended(reader)


def test_data_nobody_asked_for() -> None:
    idle = ResponseReader()
    with pytest.raises(BadResponse):
        idle.feed(OK)  # before start()
    assert_ended(idle)
    reader = ResponseReader()
    read_on(reader, OK)
    with pytest.raises(BadResponse):
        reader.feed(OK)  # after a complete answer, before the next start()
    assert_ended(reader)


def test_start_during_an_answer_is_refused() -> None:
    reader = ResponseReader()
    reader.start(head=False, limit=LIMIT)
    assert reader.feed(OK[:10]) is None
    with pytest.raises(ConnectionClosed):  # the last exchange was abandoned half-way
        reader.start(head=False, limit=LIMIT)


# --- properties ----------------------------------------------------------------------------

PROPERTY = settings(max_examples=200, deadline=None)
TOKEN = st.text(
    "!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-",
    min_size=1,
    max_size=12,
)
VISIBLE = "".join(map(chr, range(0x21, 0x7F)))
VALUE = st.builds(operator.add, st.sampled_from(VISIBLE), st.text(VISIBLE + " \t", max_size=20))
FRAMED = frozenset({"content-length", "transfer-encoding", "connection", "proxy-connection"})


@dataclass(frozen=True)
class Answer:
    """A valid answer's bytes and what a reader must make of them."""

    data: bytes
    response: Response
    keep_alive: bool
    until_close: bool


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    """Any valid answer: status, fields, Content-Length, chunked (arbitrary chunk sizes,
    extensions, a trailer) or close-delimited bodies, HTTP/1.0 or 1.1, interim answers first."""
    status = draw(st.sampled_from([200, 201, 302, 400, 404, 500, 503]))
    version = draw(st.sampled_from(["1.1", "1.0"]))
    names = TOKEN.filter(lambda name: name.lower() not in FRAMED)
    fields = list(draw(st.lists(st.tuples(names, VALUE), max_size=6)))
    connection = draw(st.sampled_from([None, "close", "keep-alive"]))
    framing = draw(
        st.sampled_from(["length", "chunked", "close"] if version == "1.1" else ["length", "close"])
    )
    body = draw(st.binary(max_size=400))
    if connection is not None:
        fields.append(("Connection", connection))
    trailer: list[tuple[str, str]] = []
    if framing == "length":
        fields.append(("Content-Length", str(len(body))))
        wire_body = body
    elif framing == "chunked":
        fields.append(("Transfer-Encoding", "chunked"))
        wire_body = draw(chunk_encodings(body))
        trailer = draw(st.lists(st.tuples(st.just("X-Trailer"), VALUE), max_size=1))
        wire_body += (
            b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in trailer) + b"\r\n"
        )
    else:
        wire_body = body
    head = f"HTTP/{version} {status} Reason\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    interim = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n"]))
    persistent = connection == "keep-alive" if version == "1.0" else connection != "close"
    return Answer(
        data=interim + head.encode() + b"\r\n" + wire_body,
        response=Response(status, tuple(fields + trailer), body),
        keep_alive=persistent and framing != "close",
        until_close=framing == "close",
    )


@st.composite
def chunk_encodings(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` cut into chunks of arbitrary sizes, some with extensions, and the last chunk."""
    sizes = itertools.cycle(draw(st.lists(st.integers(1, 80), min_size=1, max_size=8)))
    exts = itertools.cycle(draw(st.lists(st.sampled_from([b"", b";a=1", b';n="v"']), min_size=1)))
    size_format = draw(st.sampled_from([b"%x", b"%X", b"%04x"]))
    out, rest = [], body
    while rest:
        size = min(next(sizes), len(rest))
        out.append(size_format % size + next(exts) + b"\r\n" + rest[:size] + b"\r\n")
        rest = rest[size:]
    return b"".join(out) + b"0\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (kept within it, empty pieces dropped)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@PROPERTY
@given(answer=answers(), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_any_split_parses_like_the_whole(answer: Answer, cuts: list[int]) -> None:
    eof = answer.until_close
    whole = read(answer.data, eof=eof)
    assert whole == (answer.response, answer.keep_alive)
    assert read(split(answer.data, cuts), eof=eof) == whole
    if answer.keep_alive:  # the same stream then carries the next answer just as well
        reader = ResponseReader()
        read_on(reader, answer.data)
        assert read_on(reader, split(answer.data, cuts)) == answer.response


@PROPERTY
@given(answer=answers(), limit=st.integers(0, 450))
def test_the_limit_is_the_body_size(answer: Answer, limit: int) -> None:
    size = len(answer.response.body)
    if size <= limit:
        assert read(answer.data, limit=limit, eof=answer.until_close)[0] == answer.response
    else:
        with pytest.raises(ResponseTooLarge):
            read(answer.data, limit=limit, eof=answer.until_close)


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete"]),
        st.integers(0, 10_000),
        st.binary(min_size=1, max_size=4)
        | st.sampled_from([b"\r\n", b"\n", b":", b" ", b"0", b";"]),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    for kind, at, blob in mutations:
        at %= len(data) + 1
        if kind == "flip":
            data = data[:at] + blob + data[at + len(blob) :]
        elif kind == "insert":
            data = data[:at] + blob + data[at:]
        else:
            data = data[:at] + data[at + len(blob) :]
    return data


def outcome(data: bytes, cuts: list[int], *, head: bool, limit: int) -> object:
    """What a reader makes of `data` cut at `cuts`, then the close: the answer, or the class
    of a documented error (anything else escapes and fails the test). Never stuck: after the
    last byte and the close there is always one or the other."""
    reader = ResponseReader()
    reader.start(head=head, limit=limit)
    try:
        for piece in split(data, cuts):
            if (response := reader.feed(piece)) is not None:
                return response
        return reader.feed_eof()
    except (BadResponse, ResponseTooLarge, ConnectionClosed) as exc:
        assert_ended(reader)
        return type(exc)


@PROPERTY
@given(
    answer=answers(),
    mutations=MUTATIONS,
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    head=st.booleans(),
    limit=st.sampled_from([LIMIT, 64]),
)
def test_mutated_answers_fail_only_with_documented_errors(
    answer: Answer, mutations: list[tuple[str, int, bytes]], cuts: list[int], head: bool, limit: int
) -> None:
    data = mutate(answer.data, mutations)
    # llhttp is incremental: where the bytes were cut changes nothing, even in broken framing.
    assert outcome(data, cuts, head=head, limit=limit) == outcome(data, [], head=head, limit=limit)


@PROPERTY
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_random_bytes_fail_only_with_documented_errors(data: bytes, cuts: list[int]) -> None:
    data = b"HTTP/1.1 " + data
    assert outcome(data, cuts, head=False, limit=LIMIT) == outcome(
        data, [], head=False, limit=LIMIT
    )
