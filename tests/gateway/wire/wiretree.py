"""A tiny protobuf wire codec for tests: bytes <-> a tree of fields, to rewrite messages byte-wise.

Independent of the kernels under test (plain Python, driven by the protobuf descriptors), so
tests can produce encodings the protobuf library never writes itself but accepts when parsing:
fields out of order, unknown fields, a scalar repeated (last wins), a singular message split in
two (merged), over-long varints; and bytes it must reject (invalid UTF-8 in a deep string).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import FieldDescriptor as FD

VARINT, I64, LEN, I32 = 0, 1, 2, 5


@dataclass
class Field:
    number: int
    wtype: int
    value: Any  # int (varint), bytes (fixed, string, bytes, unknown LEN) or list[Field] (message)
    desc: Any = None  # descriptor of a message value
    kind: str = "unknown"  # scalar | string | bytes | message | unknown
    pad: int = field(default=0)  # extra continuation bytes when encoding the tag


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def varint(value: int, pad: int = 0) -> bytes:
    """Base-128 varint of `value` (two's complement for negatives), with `pad` redundant bytes."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            break
    if pad:
        out[-1] |= 0x80
        out.extend([0x80] * (pad - 1))
        out.append(0)
    return bytes(out)


def _kind(fd: Any) -> str:
    if fd is None:
        return "unknown"
    if fd.type == FD.TYPE_MESSAGE:
        return "message"
    if fd.type == FD.TYPE_STRING:
        return "string"
    if fd.type == FD.TYPE_BYTES:
        return "bytes"
    return "scalar"


def parse(data: bytes, desc: Any) -> list[Field]:
    """The fields of a well-formed message, sub-messages parsed recursively."""
    out: list[Field] = []
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wtype = key >> 3, key & 7
        fd = desc.fields_by_number.get(number)
        kind = _kind(fd)
        if wtype == VARINT:
            v, pos = read_varint(data, pos)
            out.append(Field(number, wtype, v, kind=kind))
        elif wtype == I64:
            out.append(Field(number, wtype, data[pos : pos + 8], kind=kind))
            pos += 8
        elif wtype == I32:
            out.append(Field(number, wtype, data[pos : pos + 4], kind=kind))
            pos += 4
        elif wtype == LEN:
            n, pos = read_varint(data, pos)
            payload = data[pos : pos + n]
            pos += n
            if kind == "message":
                out.append(Field(number, wtype, parse(payload, fd.message_type), fd.message_type, kind))
            else:
                out.append(Field(number, wtype, payload, kind=kind))
        else:
            raise ValueError(f"unexpected wire type {wtype}")
    return out


def encode(fields: list[Field], rnd: random.Random | None = None, overlong: float = 0.0) -> bytes:
    """Bytes of `fields`; with `rnd`, varints are padded with probability `overlong` (within upb's limits)."""

    def pad(limit: int, size: int) -> int:
        if rnd is None or rnd.random() >= overlong or size >= limit:
            return 0
        return rnd.randint(1, limit - size)

    out = bytearray()
    for f in fields:
        key = (f.number << 3) | f.wtype
        out += varint(key, f.pad or pad(5, len(varint(key))))
        if f.wtype == VARINT:
            out += varint(f.value, pad(10, len(varint(f.value))))
        elif f.wtype in (I64, I32):
            out += f.value
        else:
            payload = encode(f.value, rnd, overlong) if isinstance(f.value, list) else f.value
            out += varint(len(payload), pad(5, len(varint(len(payload)))))
            out += payload
    return bytes(out)


def walk(fields: list[Field]) -> list[Field]:
    """Every field in the tree, depth first."""
    out: list[Field] = []
    for f in fields:
        out.append(f)
        if isinstance(f.value, list):
            out.extend(walk(f.value))
    return out


def messages(fields: list[Field], desc: Any) -> list[tuple[list[Field], Any]]:
    """(field list, descriptor) of every sub-message and then of the root (children first)."""
    out = []
    for f in fields:
        if f.kind == "message":
            out.extend(messages(f.value, f.desc))
    out.append((fields, desc))
    return out


# ---------------------------------------------------------------- equivalence-preserving rewrites
def _random_scalar(fd: Any, rnd: random.Random) -> Field:
    t = fd.type
    if t == FD.TYPE_STRING:
        text = "".join(rnd.choice("ab é中😀\x00") for _ in range(rnd.randint(0, 4)))
        return Field(fd.number, LEN, text.encode(), kind="string")
    if t == FD.TYPE_BYTES:
        return Field(fd.number, LEN, rnd.randbytes(rnd.choice([0, 8, 16, rnd.randint(0, 20)])), kind="bytes")
    if t in (FD.TYPE_FIXED64, FD.TYPE_SFIXED64, FD.TYPE_DOUBLE):
        return Field(fd.number, I64, rnd.randint(0, 2**63 - 1).to_bytes(8, "little"), kind="scalar")
    if t in (FD.TYPE_FIXED32, FD.TYPE_SFIXED32, FD.TYPE_FLOAT):
        return Field(fd.number, I32, rnd.randbytes(4), kind="scalar")
    if t == FD.TYPE_ENUM:
        return Field(fd.number, VARINT, rnd.randint(-128, 127), kind="scalar")  # fits the int8 columns
    return Field(fd.number, VARINT, rnd.randint(0, 2**64 - 1), kind="scalar")


def _unknown(desc: Any, rnd: random.Random) -> Field:
    numbers = [n for n in range(1, 40) if n not in desc.fields_by_number] + [1000, 2**29 - 1]
    number = rnd.choice(numbers)
    wtype = rnd.choice([VARINT, I64, LEN, I32])
    if wtype == VARINT:
        return Field(number, wtype, rnd.randint(0, 2**64 - 1))
    if wtype == I64:
        return Field(number, wtype, rnd.randbytes(8))
    if wtype == I32:
        return Field(number, wtype, rnd.randbytes(4))
    return Field(number, wtype, rnd.randbytes(rnd.randint(0, 6)))  # never validated, even as UTF-8


def _shuffle(fields: list[Field], rnd: random.Random) -> None:
    """Random interleaving that keeps the order of each field number (repeated fields stay in order)."""
    by_number: dict[int, list[Field]] = {}
    for f in fields:
        by_number.setdefault(f.number, []).append(f)
    slots = [f.number for f in fields]
    rnd.shuffle(slots)
    fields[:] = [by_number[n].pop(0) for n in slots]


def rewrite(fields: list[Field], desc: Any, rnd: random.Random, rate: float = 0.3) -> None:
    """Rewrite every message in place without changing what the protobuf library parses it to.

    Except for inserted singular fields, which change the value on purpose (the reference
    parser is the oracle): a scalar occurring twice (last wins, a oneof switching case) or an
    empty singular message merged into the existing one.
    """
    for msg, mdesc in messages(fields, desc):
        for _ in range(2):
            if rnd.random() < rate:
                msg.insert(rnd.randint(0, len(msg)), _unknown(mdesc, rnd))
        singular = [fd for fd in mdesc.fields if not fd.is_repeated]
        if singular and rnd.random() < rate:
            fd = rnd.choice(singular)
            if fd.type == FD.TYPE_MESSAGE:
                extra = Field(fd.number, LEN, [], fd.message_type, "message")
            else:
                extra = _random_scalar(fd, rnd)
            msg.insert(rnd.randint(0, len(msg)), extra)
        for f in list(msg):
            fd = mdesc.fields_by_number.get(f.number)
            if (
                f.kind == "message"
                and fd is not None
                and not fd.is_repeated
                and len(f.value) > 1
                and rnd.random() < rate
            ):
                cut = rnd.randint(1, len(f.value) - 1)  # one message sent as two halves: merged
                k = next(j for j, g in enumerate(msg) if g is f)
                msg[k : k + 1] = [
                    Field(f.number, LEN, f.value[:cut], f.desc, "message"),
                    Field(f.number, LEN, f.value[cut:], f.desc, "message"),
                ]
        if rnd.random() < rate * 2:
            _shuffle(msg, rnd)
