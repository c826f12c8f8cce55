"""Hypothesis strategies for chatmem requests, built from the message descriptors, mixed with targeted values.

``requests(rpc, pools)`` draws a ``Case`` for one RPC: either a request message, whose every field is drawn
from a strategy for its protobuf type (all scalar types, enums with unknown values, nested and repeated
messages, maps) mixed, by field name, with values aimed at the server's checks (ids, sizes around the
limits, page tokens, extreme integers); or raw bytes that are not a valid request (random, a valid
request damaged, or wire-level traps such as wrong wire types and out-of-range varints).
"""

from __future__ import annotations

import base64
import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from tests.rpcs import Rpc

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)

# The server's default limits (server/config.py LimitSettings); sizes are drawn around them.
MAX_ID = 128
MAX_CONTENT = 1024 * 1024
MAX_NAME = 256
MAX_TITLE = 1024
MAX_MESSAGES = 100
MAX_METADATA_ENTRIES = 64
MAX_METADATA_BYTES = 16 * 1024
MAX_PREFERENCES = 100
MAX_PREFERENCE_VALUE = 64 * 1024
MAX_TTL_S = 366 * 24 * 3600

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")

# Fields whose value is an id (the request's resource names).
ID_FIELDS = frozenset({"workspace_id", "thread_id", "user_id", "request_id"})
# Counts that 0 defaults and the server caps (page_size, limit, chunk_size, max_messages) and budgets.
COUNT_FIELDS = frozenset({"page_size", "limit", "chunk_size", "max_messages", "max_chars"})
SIZED_COUNTS = [0, 1, -1, 50, 99, 100, 101, 999, 1000, 1001, 4999, 5000, 5001, 2**31 - 1, -(2**31)]
SEQS = [0, 1, -1, 2, 2**31 - 1, 2**31, 2**32, 2**62 - 1, 2**62, 2**62 + 1, 2**63 - 1, -(2**63)]
TTL_SECONDS = [-5, -1, 0, 1, 59, 3600, MAX_TTL_S - 1, MAX_TTL_S, MAX_TTL_S + 1, 2**31, 2**63 - 1, -(2**63)]
NANOS = [0, 1, -1, 999_999_999, 1_000_000_000, -(10**9), 2**31 - 1, -(2**31)]

# Ids that are wrong in every way the server must refuse, and some that are odd but valid.
HOSTILE_IDS = [
    " ",
    "a b",
    "a\x00b",
    "\x00",
    "a\nb",
    "\r\n",
    "a\tb",
    "\x1b[31m",
    "\x7f",
    "../etc/passwd",
    "a/b",
    "/",
    "a\\b",
    "{b:17}",
    "a{b}",
    "*",
    "?",
    "-lead",
    ".lead",
    "_lead",
    "'; DROP TABLE messages; --",
    "$(reboot)",
    "%2F",
    "é",
    "日本語",
    "😀",
    "a\u202eb",
    "\ufeffa",
    "a\u200bb",
    "\uff41",  # fullwidth a
    "a" * (MAX_ID + 1),
    "a" * 1025,
    "a" * 100_000,
]
ODD_VALID_IDS = ["a", "0", "a" * MAX_ID, "a:b@c.d-e_f", "A-Z.0:9@x"]


def is_valid_id(value: str) -> bool:
    """Tell whether the server must accept ``value`` as an id (the documented rule, restated)."""
    return 0 < len(value) <= MAX_ID and ID_RE.fullmatch(value) is not None


@dataclass
class Pools:
    """Values shared by every RPC's strategy: ids of resources that exist, and page tokens issued for them.

    Attributes:
        workspaces: workspace ids with data.
        threads: thread ids with messages (in every workspace of ``workspaces``).
        users: user ids that own threads or preferences.
        pref_keys: preference keys that are set.
        missing_threads: valid thread ids that no request ever creates.
        tokens: page tokens the server issued, each with (kind, scope) it continues.
    """

    workspaces: list[str]
    threads: list[str]
    users: list[str]
    pref_keys: list[str]
    missing_threads: list[str]
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One fuzz case: a request message, or raw bytes that are not a valid request (``message`` is None)."""

    kind: str
    payload: bytes
    message: Message | None = None

    def __repr__(self) -> str:
        shown = repr(self.message) if self.message is not None else repr(self.payload[:200])
        return f"Case({self.kind}, {len(self.payload)} bytes, {shown[:2000]})"


def _text(max_size: int = 40) -> st.SearchStrategy[str]:
    # Everything Python can encode as UTF-8 (no lone surrogates): controls, NUL, any plane.
    return st.text(st.characters(exclude_categories=["Cs"]), max_size=max_size)


def _sized(limit: int) -> st.SearchStrategy[str]:
    """Strings whose UTF-8 size is at, just under or just over ``limit``, in 1-, 2-, 3- and 4-byte characters."""
    chars = st.sampled_from(["x", "é", "€", "😀"])
    delta = st.integers(-2, 2)
    return st.builds(lambda c, d: c * max(0, limit // len(c.encode()) + d), chars, delta)


def _ids(pool: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(pool),
        st.just(""),
        st.sampled_from(HOSTILE_IDS),
        st.sampled_from(ODD_VALID_IDS),
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True),
        _text(),
    )


def _mutated_tokens(tokens: list[str]) -> st.SearchStrategy[str]:
    def mutate(token: str, how: int, at: int, ch: str) -> str:
        i = at % max(1, len(token))
        if how == 0:
            return token[:i]  # truncated
        if how == 1:
            return token[:i] + ch + token[i + 1 :]  # one character replaced
        if how == 2:
            return token + ch  # one character more
        if how == 3:
            return token + "=="  # padding the server strips
        return token[::-1]

    return st.builds(
        mutate,
        st.sampled_from(tokens),
        st.integers(0, 4),
        st.integers(0, 2000),
        st.sampled_from(list(string.ascii_letters + string.digits + "-_=+/.%\x00é")),
    )


def _forged_tokens() -> st.SearchStrategy[str]:
    """Tokens of the right encoding (base64url JSON) but with contents no server issued."""
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _text(10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["k", "q", "p", "next", "t", "id"]), inner, max_size=4)
        ),
        max_leaves=8,
    )
    encode = lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode().rstrip("=")  # noqa: E731
    return st.builds(encode, json_values)


def _tokens(pools: Pools) -> st.SearchStrategy[str]:
    issued = sorted(pools.tokens)
    options: list[st.SearchStrategy[str]] = [
        st.just(""),
        _text(64),
        st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
        _forged_tokens(),
        st.just("A" * 1025),
        st.just("%%%"),
    ]
    if issued:
        options += [st.sampled_from(issued), _mutated_tokens(issued)]
    return st.one_of(options)


def _int_range(fd: FieldDescriptor) -> tuple[int, int]:
    t = fd.type
    if t in (fd.TYPE_INT32, fd.TYPE_SINT32, fd.TYPE_SFIXED32):
        return INT32
    if t in (fd.TYPE_UINT32, fd.TYPE_FIXED32):
        return UINT32
    if t in (fd.TYPE_UINT64, fd.TYPE_FIXED64):
        return UINT64
    return INT64


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Any value of the field's protobuf type, edges included."""
    t = fd.type
    if t == fd.TYPE_STRING:
        return _text()
    if t == fd.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == fd.TYPE_BOOL:
        return st.booleans()
    if t in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
        return st.floats(width=32 if t == fd.TYPE_FLOAT else 64)
    if t == fd.TYPE_ENUM:
        known = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(*INT32))  # open enums keep unknown values
    low, high = _int_range(fd)
    edges = [v for v in (low, high, 0, 1, -1, 2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**63 - 1) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


class RequestStrategies:
    """Builds, once per message type, the strategy of that message's requests.

    Args:
        pools: the shared ids and tokens.
    """

    def __init__(self, pools: Pools) -> None:
        self.pools = pools
        self._messages: dict[str, st.SearchStrategy[Message]] = {}

    def targeted(self, fd: FieldDescriptor) -> st.SearchStrategy[Any] | None:
        """Values aimed at the server's checks for a field, chosen by its name; None for no such aim."""
        name, p = fd.name, self.pools
        if fd.type == fd.TYPE_STRING and not fd.is_repeated:
            if name == "workspace_id":
                return _ids(p.workspaces)
            if name == "thread_id":
                return _ids(p.threads + p.missing_threads)
            if name in ("user_id", "request_id"):
                return _ids(p.users)
            if name == "page_token":
                return _tokens(p)
            if name == "content":
                return st.one_of(_sized(MAX_CONTENT), st.just("a\x00b"))
            if name == "title":
                return st.one_of(_sized(MAX_TITLE), st.just("\x00"))
            if name == "name":
                return st.one_of(_sized(MAX_NAME), st.just("tool\x00"))
        if fd.type in (fd.TYPE_INT32, fd.TYPE_INT64) and not fd.is_repeated:
            low, high = _int_range(fd)
            if name in COUNT_FIELDS:
                return st.sampled_from([v for v in SIZED_COUNTS if low <= v <= high])
            if name.endswith("_seq"):
                return st.sampled_from([v for v in SEQS if low <= v <= high])
            if name == "seconds":
                return st.sampled_from(TTL_SECONDS)
            if name == "nanos":
                return st.sampled_from([v for v in NANOS if low <= v <= high])
        if fd.is_repeated and fd.type == fd.TYPE_STRING and name == "keys":
            key = st.one_of(st.sampled_from(p.pref_keys), _ids(p.pref_keys))
            return st.one_of(
                st.lists(key, max_size=4),
                st.integers(MAX_PREFERENCES - 1, MAX_PREFERENCES + 1).map(lambda n: [f"k{i}" for i in range(n)]),
            )
        if _is_map(fd):
            if name == "metadata":
                return st.one_of(
                    st.integers(MAX_METADATA_ENTRIES - 1, MAX_METADATA_ENTRIES + 1).map(
                        lambda n: {f"k{i}": "v" for i in range(n)}
                    ),
                    st.integers(-2, 2).map(lambda d: {"k": "v" * (MAX_METADATA_BYTES - 1 + d)}),
                    st.just({"": "empty key"}),
                    st.just({"k\x00": "v"}),
                )
            if name == "preferences":
                return st.one_of(
                    st.integers(MAX_PREFERENCES - 1, MAX_PREFERENCES + 1).map(
                        lambda n: {f"k{i}": "v" for i in range(n)}
                    ),
                    st.builds(lambda k, v: {k: v}, st.sampled_from(p.pref_keys), _sized(MAX_PREFERENCE_VALUE)),
                    st.dictionaries(_ids(p.pref_keys), _text(), max_size=4),
                )
        if fd.is_repeated and fd.type == fd.TYPE_MESSAGE and name == "messages":
            one = message_factory.GetMessageClass(fd.message_type)
            plain = one(role=1, content="x") if "role" in fd.message_type.fields_by_name else one()
            return st.sampled_from([0, 1, MAX_MESSAGES, MAX_MESSAGES + 1]).map(lambda n: [plain] * n)
        return None

    def value(self, fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """The strategy for a field: its type's values, mixed with the targeted ones."""
        generic = self._generic(fd, depth)
        aimed = self.targeted(fd)
        return generic if aimed is None else st.one_of(generic, aimed)

    def _generic(self, fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if _is_map(fd):
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            return st.dictionaries(self.value(key_fd, depth + 1), self.value(value_fd, depth + 1), max_size=4)
        single = self.message(fd.message_type, depth + 1) if fd.type == fd.TYPE_MESSAGE else _scalar(fd)
        if fd.is_repeated:
            return st.lists(single, max_size=4 if depth < 2 else 1)
        return single

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Messages of a type: any subset of fields set (and so any left at their default or absent)."""
        if depth > 4:  # recursive message types end in the empty message
            return st.just(message_factory.GetMessageClass(descriptor)())
        key = f"{descriptor.full_name}@{min(depth, 2)}"
        if key not in self._messages:
            self._messages[key] = st.deferred(lambda: self._build(descriptor, depth))
        return self._messages[key]

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(descriptor)
        always = {fd.name: self.value(fd, depth) for fd in descriptor.fields if self._always(fd)}
        optional = {fd.name: self.value(fd, depth) for fd in descriptor.fields if not self._always(fd)}

        def make(values: dict[str, Any]) -> Message:
            msg = cls()
            for name, value in values.items():
                _assign(msg, descriptor.fields_by_name[name], value)
            return msg

        return st.fixed_dictionaries(always, optional=optional).map(make)

    def _always(self, fd: FieldDescriptor) -> bool:
        """Whether a field is always drawn (else it may be left unset)."""
        return False


class PlausibleStrategies(RequestStrategies):
    """Requests that are mostly valid (ids from the pools, small sizes, known enum values).

    Hostile values rarely leave a request valid, so on their own they would seldom reach a handler's
    success path; these do, and so exercise storage with odd but valid data.
    """

    def _always(self, fd: FieldDescriptor) -> bool:
        # Fields without presence are always drawn (their strategies may still give the default);
        # fields with presence (optional, messages) stay optional.
        return not fd.has_presence

    def value(self, fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """The strategy for a field: values the server should accept."""
        p, name = self.pools, fd.name
        text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
        fresh = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,12}", fullmatch=True)
        if _is_map(fd):
            keys = st.sampled_from(p.pref_keys) if name == "preferences" else fresh
            return st.dictionaries(keys, text, min_size=1 if name == "preferences" else 0, max_size=3)
        if fd.is_repeated and fd.type == fd.TYPE_STRING and name == "keys":
            return st.lists(st.sampled_from(p.pref_keys), min_size=1, max_size=3)
        if fd.is_repeated:
            single = self.message(fd.message_type, depth + 1) if fd.type == fd.TYPE_MESSAGE else self._one(fd, text)
            return st.lists(single, min_size=1, max_size=3)
        if fd.type == fd.TYPE_MESSAGE:
            return self.message(fd.message_type, depth + 1)
        if fd.type == fd.TYPE_STRING:
            if name == "workspace_id":
                return st.sampled_from([*p.workspaces, ""])
            if name == "thread_id":
                return st.one_of(st.sampled_from(p.threads), fresh)
            if name in ("user_id", "request_id"):
                return st.one_of(st.sampled_from(p.users), fresh)
            if name == "page_token":
                return st.sampled_from(["", *sorted(p.tokens)])
            if name in ("new_thread_id", "message_id", "id", "tool_call_id"):
                return fresh
            if name == "format":
                return st.sampled_from(["openai.chat", "openai.responses", "anthropic", "langchain"])
            if name == "mime_type":
                return st.sampled_from(["image/png", "audio/wav", "application/pdf"])
            if name == "uri":
                return st.sampled_from(["https://example.com/a.png", "s3://bucket/key"])
        return self._one(fd, text)

    def _one(self, fd: FieldDescriptor, text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
        if fd.type == fd.TYPE_STRING:
            return text
        if fd.type == fd.TYPE_ENUM:
            return st.sampled_from([v.number for v in fd.enum_type.values if v.number != 0] or [0])
        if fd.type == fd.TYPE_BOOL:
            return st.booleans()
        if fd.name == "seconds":
            return st.integers(1, 86_400)
        if fd.name == "nanos":
            return st.just(0)
        if fd.type in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
            return st.floats(0, 100)
        if fd.type == fd.TYPE_BYTES:
            return st.binary(max_size=16)
        return st.integers(0, 60)


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == fd.TYPE_MESSAGE and fd.is_repeated and fd.message_type.GetOptions().map_entry


def _assign(msg: Message, fd: FieldDescriptor, value: Any) -> None:
    target = getattr(msg, fd.name)
    if _is_map(fd):
        if fd.message_type.fields_by_name["value"].type == fd.TYPE_MESSAGE:
            for k, v in value.items():
                target[k].CopyFrom(v)
        else:
            target.update(value)
    elif fd.is_repeated:
        if fd.type == fd.TYPE_MESSAGE:
            for v in value:
                target.add().CopyFrom(v)
        else:
            target.extend(value)
    elif fd.type == fd.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, fd.name, value)


# --- raw bytes -------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= 2**64 - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _wire_traps(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Hand-made wire bytes: valid framing with values out of range, or framing that lies."""
    numbers = [fd.number for fd in descriptor.fields] or [1]
    number = st.one_of(st.sampled_from(numbers), st.sampled_from([0, 19000, 536_870_911, 999]))
    big = st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1])
    pieces = st.one_of(
        st.builds(lambda n, v: _tag(n, 0) + _varint(v), number, big),  # out-of-range varint
        st.builds(lambda n: _tag(n, 0) + b"\xff" * 11, number),  # overlong varint
        st.builds(
            lambda n, b: _tag(n, 2) + _varint(len(b)) + b, number, st.binary(max_size=16)
        ),  # bytes where anything
        st.builds(lambda n: _tag(n, 2) + _varint(2**31), number),  # a length past the end
        st.builds(lambda n: _tag(n, 2) + b"\x02\xff\xfe", number),  # invalid UTF-8
        st.builds(lambda n, w: _tag(n, w), number, st.sampled_from([1, 3, 4, 5, 6, 7])),  # group, fixed, bad wire types
        st.builds(lambda n: _tag(n, 5) + b"\x00\x00", number),  # truncated fixed32
        st.builds(
            lambda n, d: _tag(n, 2) + _varint(len(d)) + d, number, st.binary(max_size=8).map(lambda b: b"\x0a" + b)
        ),
    )
    return st.lists(pieces, min_size=1, max_size=4).map(b"".join)


def _damaged(encoded: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    def damage(data: bytes, how: int, at: int, byte: int) -> bytes:
        if not data:
            return bytes([byte])
        i = at % len(data)
        if how == 0:
            return data[:i]
        if how == 1:
            return data[:i] + bytes([data[i] ^ (byte or 1)]) + data[i + 1 :]
        return data[:i] + bytes([byte]) + data[i:]

    return st.builds(damage, encoded, st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255))


def requests(rpc: Rpc, hostile: RequestStrategies, plausible: RequestStrategies) -> st.SearchStrategy[Case]:
    """Cases for one RPC: descriptor-built messages (most), and bytes that are not a valid request."""
    messages = hostile.message(rpc.method.input_type)
    valid_ish = plausible.message(rpc.method.input_type)
    as_case: Callable[[Message], Case] = lambda m: Case("message", m.SerializeToString(), m)  # noqa: E731
    encoded = messages.map(lambda m: m.SerializeToString())
    return st.one_of(
        messages.map(as_case),
        valid_ish.map(as_case),
        messages.map(as_case),
        valid_ish.map(as_case),
        st.binary(max_size=128).map(lambda b: Case("random-bytes", b)),
        _damaged(encoded).map(lambda b: Case("damaged", b)),
        _wire_traps(rpc.method.input_type).map(lambda b: Case("wire-trap", b)),
    )
