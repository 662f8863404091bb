"""A small read-only D-Bus client on the standard library's sockets, for reading unit state quickly.

``check`` and ``plan`` run over SSM and must answer fast; importing gi + pydbus alone costs more
than the rest of ``check`` on Python 3.9. Reading a few properties needs only a fraction of D-Bus,
so discovery uses this module, and restarts (signals, jobs) stay on pydbus.

What this module owns:

- **Addresses**: ``unix:path=...`` and ``unix:abstract=...`` (values %-unescaped), several separated
  by ``;`` tried in order until one connects and authenticates; an optional ``guid=`` is verified.
- **Handshake**: a NUL byte, SASL ``AUTH EXTERNAL <hex of the euid's decimal digits>``, ``OK <guid>``,
  ``BEGIN``, then ``org.freedesktop.DBus.Hello`` (the bus's unique name for this connection).
- **Method calls**: one overall deadline for the connection (every connect/send/recv gets what is
  left of it); several calls can be sent at once (``call_many``: one round trip); replies matched
  by ``REPLY_SERIAL``; an error reply becomes ``RemoteError`` with the
  D-Bus error name and message; signals, other replies, calls to us and unknown message types are
  read and skipped without decoding their body. Calls carry ``NO_AUTO_START``: reading state never
  activates a service. Unix fds are never negotiated.
- **Wire format** (D-Bus specification, "Message Protocol"): marshalling and unmarshalling of every
  basic type (``y b n q i u x t d s o g h``) and container (arrays, ``ay`` as ``bytes``, structs as
  tuples, dict entries as a ``dict``, variants as ``Variant``), little- and big-endian, alignment
  relative to the message start, padding checked to be zero.
- **Bounds** against a broken or hostile peer: message size (``max_message``, default 4 MiB; the
  specification's own ceiling is 128 MiB), array length, signature length and nesting depth checked
  *before* anything is allocated or iterated; every element consumes at least one byte, so no loop
  outlives its input; an authentication line is at most 16 KiB; waiting for a reply ends at the
  deadline however many unrelated messages arrive. Malformed input raises ``ProtocolError``.

Python values: ``y n q i u x t h`` int, ``b`` bool, ``d`` float, ``s`` str, ``o`` ``ObjectPath``,
``g`` ``Signature`` (both ``str``), ``ay`` bytes, other arrays list, ``a{..}`` dict, struct tuple,
``v`` ``Variant(signature, value)``.

Importing this module must stay cheap (it is on ``check``'s path): it uses the C module ``_socket``
rather than ``socket``, whose import spends ~3 ms on Python 3.9 converting constants to enums and
loading ``selectors``, none of which a blocking unix socket needs; and plain classes, not
``NamedTuple``s (~0.2 ms each to create).
"""

import _socket
import os
import struct
import time
from functools import lru_cache
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

# --- protocol constants ------------------------------------------------------------------------------

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
NO_REPLY_EXPECTED, NO_AUTO_START, ALLOW_INTERACTIVE_AUTHORIZATION = 0x1, 0x2, 0x4
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE, UNIX_FDS = range(1, 10)
PROTOCOL_VERSION = 1

BUS_NAME = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
BUS_INTERFACE = "org.freedesktop.DBus"

# --- limits (specification values unless noted) -----------------------------------------------------

MAX_MESSAGE_SIZE = 1 << 27  # 128 MiB, the specification's ceiling
DEFAULT_MAX_MESSAGE = 4 << 20  # accepted by default; systemd's GetAll replies are 3-11 KiB
MAX_ARRAY_LENGTH = 1 << 26
MAX_SIGNATURE_LENGTH = 255
MAX_ARRAY_NESTING = 32
MAX_STRUCT_NESTING = 32
MAX_DEPTH = 64  # arrays + structs + dict entries + variants, in one value
MAX_AUTH_LINE = 16384  # not specified by D-Bus; real lines are under 100 bytes
RECV_CHUNK = 65536

_HEADER_FIELD_TYPES = {PATH: "o", INTERFACE: "s", MEMBER: "s", ERROR_NAME: "s", REPLY_SERIAL: "u",
                       DESTINATION: "s", SENDER: "s", SIGNATURE: "g", UNIX_FDS: "u"}
_REQUIRED_FIELDS = {METHOD_CALL: (PATH, MEMBER), METHOD_RETURN: (REPLY_SERIAL,),
                    ERROR: (ERROR_NAME, REPLY_SERIAL), SIGNAL: (PATH, INTERFACE, MEMBER)}
_PATH_ELEMENT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def valid_object_path(path: str) -> bool:
    """``/``, or ``/``-separated non-empty elements of ``[A-Za-z0-9_]`` (no trailing ``/``)."""
    if path == "/":
        return True
    return path.startswith("/") and all(
        element and _PATH_ELEMENT_CHARS.issuperset(element) for element in path[1:].split("/")
    )


# --- errors ------------------------------------------------------------------------------------------


class DBusError(Exception):
    """Anything that kept a call from returning a value."""


class ConnectFailed(DBusError):
    """No address of the bus could be connected to and authenticated with."""


class DBusTimeout(DBusError):
    """The deadline passed before the peer answered; ``doing`` says at which step."""

    def __init__(self, doing: str, timeout: float) -> None:
        super().__init__(f"no answer within {timeout:.3g}s while {doing}")
        self.doing = doing
        self.timeout = timeout
        self.unanswered: Tuple[int, ...] = ()  # Connection.call_many: the calls still without a reply


class Disconnected(DBusError):
    """The peer closed the connection (or an earlier failure left it unusable)."""


class ProtocolError(DBusError):
    """The peer sent something malformed or over a limit; also raised for values that cannot be marshalled."""


class RemoteError(DBusError):
    """An error reply: ``name`` is the D-Bus error name, ``message`` its text (may be empty)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name
        self.message = message


# --- values ------------------------------------------------------------------------------------------


class ObjectPath(str):
    """A D-Bus object path (``o``)."""


class Signature(str):
    """A D-Bus type signature (``g``)."""


class Variant:
    """A ``v``: one ``value`` of the one complete type ``signature``."""

    __slots__ = ("signature", "value")

    def __init__(self, signature: str, value: Any) -> None:
        self.signature = signature
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Variant):
            return NotImplemented
        return self.signature == other.signature and self.value == other.value

    def __hash__(self) -> int:
        return hash((self.signature, self.value))

    def __repr__(self) -> str:
        return f"Variant({self.signature!r}, {self.value!r})"


# --- signatures --------------------------------------------------------------------------------------

_BASIC = "ybnqiuxtdsogh"
_ALIGN = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4,
          "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1}
_FIXED_FORMAT = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "d": "d", "h": "I"}
_INT_RANGE = {"y": (0, 0xFF), "n": (-0x8000, 0x7FFF), "q": (0, 0xFFFF), "i": (-0x80000000, 0x7FFFFFFF),
              "u": (0, 0xFFFFFFFF), "h": (0, 0xFFFFFFFF), "x": (-(1 << 63), (1 << 63) - 1), "t": (0, (1 << 64) - 1)}
_STRUCTS = {order: {code: struct.Struct(order + fmt) for code, fmt in _FIXED_FORMAT.items()} for order in "<>"}


class DBusType:
    """One complete type: ``code`` is a type code (``a``, ``(`` and ``{`` for containers) and
    ``children`` its element type (array), members (struct) or key and value (dict entry)."""

    __slots__ = ("children", "code")

    def __init__(self, code: str, children: Tuple["DBusType", ...] = ()) -> None:
        self.code = code
        self.children = children

    def __repr__(self) -> str:
        return f"DBusType({self.code!r}, {self.children!r})"


def _parse_one(sig: str, pos: int, arrays: int, structs: int) -> Tuple[DBusType, int]:
    if pos >= len(sig):
        raise ProtocolError(f"signature {sig!r}: incomplete type at the end")
    code = sig[pos]
    if code in _BASIC or code == "v":
        return DBusType(code), pos + 1
    if code == "a":
        if arrays >= MAX_ARRAY_NESTING:
            raise ProtocolError(f"signature {sig!r}: arrays nested deeper than {MAX_ARRAY_NESTING}")
        if sig.startswith("{", pos + 1):
            if structs >= MAX_STRUCT_NESTING:
                raise ProtocolError(f"signature {sig!r}: structs nested deeper than {MAX_STRUCT_NESTING}")
            key, p = _parse_one(sig, pos + 2, arrays + 1, structs + 1)
            if key.code not in _BASIC:
                raise ProtocolError(f"signature {sig!r}: dict entry key must be a basic type, not {key.code!r}")
            value, p = _parse_one(sig, p, arrays + 1, structs + 1)
            if not sig.startswith("}", p):
                raise ProtocolError(f"signature {sig!r}: dict entry at {pos + 1} must have exactly two types")
            return DBusType("a", (DBusType("{", (key, value)),)), p + 1
        element, p = _parse_one(sig, pos + 1, arrays + 1, structs)
        return DBusType("a", (element,)), p
    if code == "(":
        if structs >= MAX_STRUCT_NESTING:
            raise ProtocolError(f"signature {sig!r}: structs nested deeper than {MAX_STRUCT_NESTING}")
        members: List[DBusType] = []
        p = pos + 1
        while not sig.startswith(")", p):
            member, p = _parse_one(sig, p, arrays, structs + 1)
            members.append(member)
        if not members:
            raise ProtocolError(f"signature {sig!r}: empty struct at {pos}")
        return DBusType("(", tuple(members)), p + 1
    what = "dict entry outside an array" if code == "{" else f"unknown type code {code!r}"
    raise ProtocolError(f"signature {sig!r}: {what} at {pos}")


@lru_cache(maxsize=256)  # bounded: a peer choosing signatures cannot grow it
def parse_signature(sig: str) -> Tuple[DBusType, ...]:
    """The complete types of ``sig``, in order; ``ProtocolError`` if it is not a valid signature."""
    if len(sig) > MAX_SIGNATURE_LENGTH:
        raise ProtocolError(f"signature of {len(sig)} characters (at most {MAX_SIGNATURE_LENGTH})")
    types: List[DBusType] = []
    pos = 0
    while pos < len(sig):
        t, pos = _parse_one(sig, pos, 0, 0)
        types.append(t)
    return tuple(types)


_SIGNATURE_TYPE = DBusType("g")


def _single_type(sig: str) -> DBusType:
    types = parse_signature(sig)
    if len(types) != 1:
        raise ProtocolError(f"variant signature {sig!r} must be exactly one complete type")
    return types[0]


# --- marshalling -------------------------------------------------------------------------------------


class _Writer:
    def __init__(self, order: str) -> None:
        self.order = order
        self.buf = bytearray()
        self.structs = _STRUCTS[order]

    def pad(self, alignment: int) -> None:
        self.buf.extend(b"\0" * (-len(self.buf) % alignment))

    def write(self, t: DBusType, value: Any, depth: int = 0) -> None:
        code = t.code
        if depth > MAX_DEPTH:
            raise ProtocolError(f"value nested deeper than {MAX_DEPTH}")
        if code in _FIXED_FORMAT:
            if code == "d":
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise ProtocolError(f"'d' needs a float, not {type(value).__name__}")
                value = float(value)
            elif code == "b":
                if not isinstance(value, bool):
                    raise ProtocolError(f"'b' needs a bool, not {type(value).__name__}")
                value = int(value)
            else:
                low, high = _INT_RANGE[code]
                if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                    raise ProtocolError(f"{value!r} is not a valid {code!r} (integer {low}..{high})")
            self.pad(_ALIGN[code])
            self.buf.extend(self.structs[code].pack(value))
        elif code in "sog":
            if not isinstance(value, str):
                raise ProtocolError(f"{code!r} needs a str, not {type(value).__name__}")
            if code == "o" and not valid_object_path(value):
                raise ProtocolError(f"{value!r} is not a valid object path")
            if code == "g":
                parse_signature(value)
            try:
                data = value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ProtocolError(f"{code!r} value is not valid UTF-8: {exc.reason}") from None
            if b"\0" in data:
                raise ProtocolError(f"{code!r} value contains a NUL character")
            if code == "g":
                self.buf.append(len(data))
            else:
                self.pad(4)
                self.buf.extend(self.structs["u"].pack(len(data)))
            self.buf.extend(data)
            self.buf.append(0)
        elif code == "v":
            if not isinstance(value, Variant):
                raise ProtocolError(f"'v' needs a Variant, not {type(value).__name__}")
            inner = _single_type(value.signature)
            self.write(_SIGNATURE_TYPE, value.signature)
            self.write(inner, value.value, depth + 1)
        elif code == "(":
            if not isinstance(value, (tuple, list)) or len(value) != len(t.children):
                raise ProtocolError(f"struct of {len(t.children)} members needs a tuple of that length")
            self.pad(8)
            for member, item in zip(t.children, value):
                self.write(member, item, depth + 1)
        elif code == "a":
            self._write_array(t.children[0], value, depth + 1)
        else:  # a dict entry is only ever written by _write_array
            raise ProtocolError(f"cannot marshal type code {code!r} here")

    def _write_array(self, element: DBusType, value: Any, depth: int) -> None:
        self.pad(4)
        at = len(self.buf)
        self.buf.extend(b"\0\0\0\0")
        self.pad(_ALIGN[element.code])  # padding to the first element is not part of the length
        start = len(self.buf)
        if element.code == "y" and isinstance(value, (bytes, bytearray, memoryview)):
            self.buf.extend(value)
        elif element.code == "{":
            if not isinstance(value, Mapping):
                raise ProtocolError(f"dict array needs a mapping, not {type(value).__name__}")
            key_type, value_type = element.children
            for k, v in value.items():
                self.pad(8)
                self.write(key_type, k, depth + 1)
                self.write(value_type, v, depth + 1)
        else:
            if not isinstance(value, (list, tuple)):
                raise ProtocolError(f"array needs a list or tuple, not {type(value).__name__}")
            for item in value:
                self.write(element, item, depth)
        length = len(self.buf) - start
        if length > MAX_ARRAY_LENGTH:
            raise ProtocolError(f"array of {length} bytes (at most {MAX_ARRAY_LENGTH})")
        self.structs["u"].pack_into(self.buf, at, length)


def marshal(signature: str, values: Sequence[Any], order: str = "<") -> bytes:
    """``values`` as a message body of type ``signature`` (``order``: ``<`` little, ``>`` big-endian)."""
    types = parse_signature(signature)
    if len(values) != len(types):
        raise ProtocolError(f"signature {signature!r} has {len(types)} types, got {len(values)} values")
    writer = _Writer(order)
    for t, value in zip(types, values):
        writer.write(t, value)
    return bytes(writer.buf)


# --- unmarshalling -----------------------------------------------------------------------------------


class _Reader:
    """Reads values from ``data[pos:end]``; alignment is relative to ``data[0]`` (the message start).

    Written for speed as well as strictness (systemd's ``GetAll`` replies hold hundreds of values):
    messages are only formatted on failure, and aligned positions skip the padding check.
    """

    def __init__(self, data: bytes, order: str, pos: int = 0, end: Optional[int] = None) -> None:
        self.data = data
        self.order = order
        self.pos = pos
        self.end = len(data) if end is None else end
        self.structs = _STRUCTS[order]

    def _truncated(self, pos: int, size: int, what: str) -> ProtocolError:
        return ProtocolError(f"truncated: {what} at offset {pos} needs {size} bytes, {max(0, self.end - pos)} left")

    def align(self, alignment: int) -> None:
        pos = self.pos
        pad = -pos % alignment
        if pad:
            if pos + pad > self.end:
                raise self._truncated(pos, pad, "padding")
            if any(self.data[pos:pos + pad]):
                raise ProtocolError(f"non-zero padding at offset {pos}")
            self.pos = pos + pad

    def fixed(self, code: str) -> Any:
        """A fixed-size value (each is aligned to its own size)."""
        s = self.structs[code]
        size = s.size
        if self.pos % size:
            self.align(size)
        pos = self.pos
        if pos + size > self.end:
            raise self._truncated(pos, size, repr(code))
        self.pos = pos + size
        return s.unpack_from(self.data, pos)[0]

    def _text(self, length: int, code: str) -> str:
        """``length`` bytes of UTF-8 and their NUL terminator (``s``, ``o``, ``g``)."""
        start = self.pos
        stop = start + length
        if stop + 1 > self.end:
            raise self._truncated(start, length + 1, f"{code!r} of {length} bytes")
        data = self.data
        if data[stop] != 0:
            raise ProtocolError(f"{code!r} at offset {start} is not NUL-terminated")
        if data.find(b"\0", start, stop) >= 0:
            raise ProtocolError(f"{code!r} at offset {start} contains a NUL byte")
        self.pos = stop + 1
        try:
            return data[start:stop].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{code!r} at offset {start} is not valid UTF-8: {exc.reason}") from None

    def _signature(self) -> str:
        if self.pos >= self.end:
            raise self._truncated(self.pos, 1, "'g'")
        length = self.data[self.pos]
        self.pos += 1
        return self._text(length, "g")

    def read(self, t: DBusType, depth: int = 0) -> Any:
        code = t.code
        if depth > MAX_DEPTH:
            raise ProtocolError(f"value nested deeper than {MAX_DEPTH} at offset {self.pos}")
        if code == "s":
            return self._text(self.fixed("u"), code)
        if code == "v":
            sig = self._signature()
            return Variant(sig, self.read(_single_type(sig), depth + 1))
        if code in _FIXED_FORMAT:
            value = self.fixed(code)
            if code == "b":
                if value > 1:
                    raise ProtocolError(f"boolean {value} at offset {self.pos - 4} (must be 0 or 1)")
                return bool(value)
            return value
        if code == "a":
            return self._read_array(t.children[0], depth + 1)
        if code == "(":
            if self.pos % 8:
                self.align(8)
            return tuple([self.read(member, depth + 1) for member in t.children])
        if code == "o":
            text = self._text(self.fixed("u"), code)
            if not valid_object_path(text):
                raise ProtocolError(f"invalid object path {text[:80]!r}")
            return ObjectPath(text)
        if code == "g":
            text = self._signature()
            parse_signature(text)
            return Signature(text)
        raise ProtocolError(f"cannot unmarshal type code {code!r} here")

    def _read_array(self, element: DBusType, depth: int) -> Any:
        length = self.fixed("u")
        if length > MAX_ARRAY_LENGTH:
            raise ProtocolError(f"array of {length} bytes at offset {self.pos - 4} (at most {MAX_ARRAY_LENGTH})")
        self.align(_ALIGN[element.code])
        end = self.pos + length
        if end > self.end:
            raise self._truncated(self.pos, length, f"array of {length} bytes")
        outer_end, self.end = self.end, end  # an element may not run past the array's own length
        try:
            if element.code == "y":
                data = self.data[self.pos:end]
                self.pos = end
                return bytes(data)
            if element.code == "{":
                key_type, value_type = element.children
                result: Dict[Any, Any] = {}
                while self.pos < end:
                    if self.pos % 8:
                        self.align(8)
                    key = self.read(key_type, depth + 1)
                    result[key] = self.read(value_type, depth + 1)
                return result
            items = []
            while self.pos < end:  # every element consumes at least one byte
                items.append(self.read(element, depth))
            return items
        finally:
            self.end = outer_end


def unmarshal(signature: str, data: bytes, order: str = "<", offset: int = 0) -> Tuple[Any, ...]:
    """Decode ``data[offset:]`` (which starts 8-aligned relative to ``data[0]``) as ``signature``,
    consuming all of it."""
    reader = _Reader(data, order, offset)
    values = tuple(reader.read(t) for t in parse_signature(signature))
    if reader.pos != reader.end:
        raise ProtocolError(f"{reader.end - reader.pos} bytes left over after a body of type {signature!r}")
    return values


# --- messages ----------------------------------------------------------------------------------------

_ORDERS = {ord("l"): "<", ord("B"): ">"}
_FIXED_HEADER = 16  # endianness, type, flags, version, body length, serial, header fields array length
_HEADER_FIELDS_TYPE = parse_signature("a(yv)")[0]


class Message:
    """A received message: header fields decoded (unknown codes dropped), the body on demand."""

    __slots__ = ("body_offset", "data", "fields", "flags", "order", "serial", "type")

    def __init__(self, msg_type: int, flags: int, serial: int, fields: Dict[int, Any], order: str, data: bytes,
                 body_offset: int) -> None:
        self.type = msg_type
        self.flags = flags
        self.serial = serial
        self.fields = fields  # header field code -> value
        self.order = order  # "<" or ">"
        self.data = data  # the whole message, as received
        self.body_offset = body_offset

    @property
    def signature(self) -> str:
        return str(self.fields.get(SIGNATURE, ""))

    @property
    def reply_serial(self) -> Optional[int]:
        value = self.fields.get(REPLY_SERIAL)
        return int(value) if value is not None else None

    def body(self) -> Tuple[Any, ...]:
        """The body's values, decoded on demand (messages that are skipped never are)."""
        return unmarshal(self.signature, self.data, self.order, self.body_offset)


def message_length(prefix: bytes, max_message: int = DEFAULT_MAX_MESSAGE) -> int:
    """The whole message's length from its first 16 bytes; ``ProtocolError`` when over ``max_message``."""
    if len(prefix) < _FIXED_HEADER:
        raise ProtocolError(f"message header needs {_FIXED_HEADER} bytes, got {len(prefix)}")
    order = _ORDERS.get(prefix[0])
    if order is None:
        raise ProtocolError(f"invalid byte order mark {prefix[0]:#04x} (expected 'l' or 'B')")
    if prefix[3] != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {prefix[3]}")
    body_length, _serial, fields_length = struct.unpack_from(order + "III", prefix, 4)
    if fields_length > MAX_ARRAY_LENGTH:
        raise ProtocolError(f"header fields of {fields_length} bytes (at most {MAX_ARRAY_LENGTH})")
    header_end = _FIXED_HEADER + fields_length
    total = header_end + (-header_end % 8) + body_length
    limit = min(max_message, MAX_MESSAGE_SIZE)
    if total > limit:
        raise ProtocolError(f"message of {total} bytes exceeds the limit of {limit} bytes")
    return total


def decode_message(data: bytes, max_message: int = DEFAULT_MAX_MESSAGE) -> Message:
    """Parse and validate a whole message's header; the body stays undecoded until ``Message.body()``."""
    total = message_length(data[:_FIXED_HEADER], max_message)
    if len(data) != total:
        raise ProtocolError(f"message of {len(data)} bytes, its header says {total}")
    order = _ORDERS[data[0]]
    msg_type, flags = data[1], data[2]
    body_length, serial = struct.unpack_from(order + "II", data, 4)
    if serial == 0:
        raise ProtocolError("message serial 0")
    reader = _Reader(data, order, 12)
    fields: Dict[int, Any] = {}
    for code, variant in reader.read(_HEADER_FIELDS_TYPE):
        expected = _HEADER_FIELD_TYPES.get(code)
        if expected is None:
            continue  # unknown header fields must be ignored
        if variant.signature != expected:
            raise ProtocolError(f"header field {code} has type {variant.signature!r}, expected {expected!r}")
        fields[code] = variant.value
    reader.align(8)
    if reader.pos + body_length != total:
        raise ProtocolError("header fields do not end where the body starts")
    missing = [code for code in _REQUIRED_FIELDS.get(msg_type, ()) if code not in fields]
    if missing:
        raise ProtocolError(f"message of type {msg_type} lacks required header fields {missing}")
    if body_length and SIGNATURE not in fields:
        raise ProtocolError(f"body of {body_length} bytes without a signature")
    return Message(msg_type, flags, serial, fields, order, data, reader.pos)


def encode_message(
    msg_type: int,
    serial: int,
    fields: Mapping[int, Any],
    signature: str = "",
    body: Sequence[Any] = (),
    *,
    flags: int = 0,
    order: str = "<",
) -> bytes:
    """A whole message. ``fields`` maps header field codes to plain values (typed per the spec);
    ``SIGNATURE`` is added from ``signature`` when the body is not empty."""
    body_data = marshal(signature, body, order)
    header_fields = [(code, Variant(_HEADER_FIELD_TYPES[code], value)) for code, value in fields.items()]
    if signature:
        header_fields.append((SIGNATURE, Variant("g", Signature(signature))))
    writer = _Writer(order)
    writer.buf.extend(b"l" if order == "<" else b"B")
    writer.buf.extend(bytes((msg_type, flags, PROTOCOL_VERSION)))
    writer.buf.extend(writer.structs["u"].pack(len(body_data)))
    writer.buf.extend(writer.structs["u"].pack(serial))
    writer.write(_HEADER_FIELDS_TYPE, header_fields)
    writer.pad(8)
    writer.buf.extend(body_data)
    return bytes(writer.buf)


# --- addresses ---------------------------------------------------------------------------------------


class Address:
    """One ``unix:`` entry of a bus address."""

    __slots__ = ("guid", "sockaddr", "text")

    def __init__(self, text: str, sockaddr: Union[str, bytes], guid: Optional[str]) -> None:
        self.text = text  # as given, for messages
        self.sockaddr = sockaddr  # a path, or bytes starting with NUL (abstract namespace)
        self.guid = guid


def _unescape(value: str) -> bytes:
    """An address value with its ``%XX`` escapes decoded."""
    raw = value.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == ord("%"):
            digits = raw[i + 1:i + 3]
            if len(digits) != 2 or not all(c in b"0123456789abcdefABCDEF" for c in digits):
                raise ProtocolError(f"bad %-escape in address value {value!r}")
            out.append(int(digits, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def parse_address(address: str) -> List[Address]:
    """The ``unix:`` entries of a bus address, in order; other transports and malformed entries are
    ``ProtocolError``s (the system bus is always a unix socket)."""
    entries: List[Address] = []
    for text in address.split(";"):
        if not text:
            continue
        transport, sep, rest = text.partition(":")
        if not sep:
            raise ProtocolError(f"address {text!r}: no transport (expected unix:path=...)")
        if transport != "unix":
            raise ProtocolError(f"address {text!r}: transport {transport!r} is not supported (unix only)")
        keys: Dict[str, bytes] = {}
        for pair in rest.split(","):
            key, eq, value = pair.partition("=")
            if not eq or not key or key in keys:
                raise ProtocolError(f"address {text!r}: malformed or repeated key in {pair!r}")
            keys[key] = _unescape(value)
        guid = keys.pop("guid", b"").decode("ascii", "replace") or None
        if set(keys) == {"path"}:
            sockaddr: Union[str, bytes] = os.fsdecode(keys["path"])
        elif set(keys) == {"abstract"}:
            sockaddr = b"\0" + keys["abstract"]
        else:
            raise ProtocolError(f"address {text!r}: needs exactly one of path= or abstract=")
        entries.append(Address(text, sockaddr, guid))
    if not entries:
        raise ProtocolError(f"address {address!r}: empty")
    return entries


# --- the connection ----------------------------------------------------------------------------------


class Connection:
    """An authenticated connection to a message bus; every operation ends by ``deadline``.

    ``Connection.open(address, timeout=...)`` sets the deadline to now + ``timeout`` on ``clock``.
    """

    def __init__(
        self,
        sock: "_socket.socket",
        address: Address,
        deadline: float,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.sock: Optional[_socket.socket] = sock
        self.address = address
        self.deadline = deadline
        self.timeout = timeout  # what the deadline was set from, for messages
        self.clock = clock
        self.max_message = max_message
        self.unique_name = ""
        self.guid = ""
        self._buf = bytearray()
        self._serial = 0

    @classmethod
    def open(
        cls,
        address: str,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> "Connection":
        """Connect to the first address that accepts and authenticates us, then ``Hello``.

        Raises ``ConnectFailed`` (no address worked), ``DBusTimeout``, ``ProtocolError``,
        ``Disconnected`` or ``RemoteError`` (``Hello`` refused).
        """
        deadline = clock() + timeout
        failures: List[str] = []
        entries = parse_address(address)
        for entry in entries:
            try:
                sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # close-on-exec, as every socket
            except OSError as exc:  # e.g. out of file descriptors
                raise ConnectFailed(f"cannot create a socket: {exc.strerror or exc}") from None
            conn = cls(sock, entry, deadline, timeout=timeout, clock=clock, max_message=max_message)
            try:
                sock.settimeout(conn._remaining("connecting"))
                sock.connect(entry.sockaddr)
                conn._authenticate()
            except _socket.timeout:
                conn.close()
                raise DBusTimeout("connecting", timeout) from None
            except (ConnectFailed, Disconnected, OSError) as exc:
                conn.close()
                reason = f"cannot connect: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
                failures.append(reason if len(entries) == 1 else f"{entry.text}: {reason}")
                continue
            except BaseException:
                conn.close()
                raise
            try:
                reply = conn.call(BUS_NAME, BUS_PATH, BUS_INTERFACE, "Hello")
                if len(reply) != 1 or not isinstance(reply[0], str):
                    raise ProtocolError(f"Hello returned {reply!r}, expected one string")
            except BaseException:
                conn.close()
                raise
            conn.unique_name = reply[0]
            return conn
        raise ConnectFailed("; ".join(failures))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- socket operations, each bounded by the deadline --------------------------------------------

    def _remaining(self, doing: str) -> float:
        remaining = self.deadline - self.clock()
        if remaining <= 0:
            self.close()
            raise DBusTimeout(doing, self.timeout)
        return remaining

    def _live_socket(self) -> "_socket.socket":
        if self.sock is None:
            raise Disconnected("connection closed")
        return self.sock

    def _send(self, data: bytes, doing: str) -> None:
        sock = self._live_socket()
        try:
            sock.settimeout(self._remaining(doing))
            sock.sendall(data)
        except _socket.timeout:
            self.close()
            raise DBusTimeout(doing, self.timeout) from None
        except OSError as exc:
            self.close()
            raise Disconnected(f"connection lost while {doing}: {exc.strerror or exc}") from None

    def _fill(self, size: int, doing: str) -> None:
        """Receive until at least ``size`` bytes are buffered."""
        while len(self._buf) < size:
            sock = self._live_socket()
            try:
                sock.settimeout(self._remaining(doing))
                chunk = sock.recv(max(RECV_CHUNK, min(size - len(self._buf), self.max_message)))
            except _socket.timeout:
                self.close()
                raise DBusTimeout(doing, self.timeout) from None
            except OSError as exc:
                self.close()
                raise Disconnected(f"connection lost while {doing}: {exc.strerror or exc}") from None
            if not chunk:
                self.close()
                raise Disconnected(f"the peer closed the connection while {doing}")
            self._buf.extend(chunk)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    # --- authentication -----------------------------------------------------------------------------

    def _read_line(self) -> str:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_AUTH_LINE:
                raise ProtocolError(f"authentication line longer than {MAX_AUTH_LINE} bytes")
            self._fill(len(self._buf) + 1, "authenticating")
        line = self._take(end + 2)[:-2]
        try:
            return line.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("authentication reply is not ASCII") from None

    def _authenticate(self) -> None:
        uid = str(os.geteuid()).encode("ascii").hex()
        self._send(b"\0AUTH EXTERNAL " + uid.encode("ascii") + b"\r\n", "authenticating")
        reply = self._read_line()
        command, _, argument = reply.partition(" ")
        if command == "REJECTED":
            raise ConnectFailed(f"authentication rejected (the bus offers: {argument or 'nothing'})")
        if command != "OK":
            raise ConnectFailed(f"unexpected authentication reply {reply[:80]!r}")
        guid = argument.strip()
        if self.address.guid and guid != self.address.guid:
            raise ConnectFailed(f"bus guid {guid!r} is not the address's {self.address.guid!r}")
        self.guid = guid
        self._send(b"BEGIN\r\n", "authenticating")

    # --- messages -----------------------------------------------------------------------------------

    def receive(self, doing: str = "waiting for a message") -> Message:
        """The next whole message (header validated, body not yet decoded)."""
        try:
            self._fill(_FIXED_HEADER, doing)
            total = message_length(bytes(self._buf[:_FIXED_HEADER]), self.max_message)
            self._fill(total, doing)
            return decode_message(self._take(total), self.max_message)
        except ProtocolError:
            self.close()  # the stream cannot be resynchronised
            raise

    def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        args: Sequence[Any] = (),
        *,
        reply_signature: Optional[str] = None,
        auto_start: bool = False,
    ) -> Tuple[Any, ...]:
        """Call a method and return the reply's values; ``RemoteError`` for an error reply, and
        ``ProtocolError`` when ``reply_signature`` is given and the reply has another."""
        call = MethodCall(destination, path, interface, member, signature, args, reply_signature=reply_signature)
        (result,) = self.call_many([call], auto_start=auto_start)
        if isinstance(result, RemoteError):
            raise result
        return result

    def call_many(
        self, calls: Sequence["MethodCall"], *, auto_start: bool = False
    ) -> List[Union[Tuple[Any, ...], RemoteError]]:
        """Send every call at once, then collect the replies (in whatever order they come): one round
        trip instead of one per call. Each result is the reply's values or, in its place, the
        ``RemoteError`` of an error reply. A timeout raises ``DBusTimeout`` with ``unanswered`` set
        (indexes into ``calls``); a reply not of the call's ``reply_signature`` raises ``ProtocolError``.
        """
        waiting: Dict[int, int] = {}  # serial -> index in calls
        data = bytearray()
        for index, call in enumerate(calls):
            self._serial += 1
            waiting[self._serial] = index
            fields = {PATH: ObjectPath(call.path), INTERFACE: call.interface, MEMBER: call.member,
                      DESTINATION: call.destination}
            data += encode_message(METHOD_CALL, self._serial, fields, call.signature, call.args,
                                   flags=0 if auto_start else NO_AUTO_START)
        results: List[Union[Tuple[Any, ...], RemoteError, None]] = [None] * len(calls)
        if calls:
            self._send(bytes(data), f"calling {calls[0].member}")
        while waiting:
            first = calls[min(waiting.values())]
            try:
                message = self.receive(f"waiting for the reply to {first.member}")
            except DBusTimeout as exc:
                exc.unanswered = tuple(sorted(waiting.values()))
                raise
            if message.type not in (METHOD_RETURN, ERROR) or message.reply_serial not in waiting:
                continue  # signals, calls to us, other replies, unknown types: not ours to handle
            index = waiting.pop(message.reply_serial)
            call = calls[index]
            try:
                if message.type == METHOD_RETURN and call.reply_signature not in (None, message.signature):
                    raise ProtocolError(f"{call.member} returned {message.signature!r}, "
                                        f"expected {call.reply_signature!r}")
                body = message.body()
            except ProtocolError:
                self.close()  # a peer that sends this is not one to keep talking to
                raise
            if message.type == ERROR:
                text = body[0] if body and isinstance(body[0], str) else ""
                results[index] = RemoteError(str(message.fields[ERROR_NAME]), text)
            else:
                results[index] = body
        return [r for r in results if r is not None]  # all of them: every call was answered


class MethodCall:
    """A method call for ``Connection.call_many``."""

    __slots__ = ("args", "destination", "interface", "member", "path", "reply_signature", "signature")

    def __init__(self, destination: str, path: str, interface: str, member: str, signature: str = "",
                 args: Sequence[Any] = (), *, reply_signature: Optional[str] = None) -> None:
        self.destination = destination
        self.path = path
        self.interface = interface
        self.member = member
        self.signature = signature
        self.args = args
        self.reply_signature = reply_signature
