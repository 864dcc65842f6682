"""Where each element of a DICOM file lies in its bytes, for structure-aware mutators.

:func:`layout` walks the raw bytes (no pydicom parsing, so it also walks files pydicom
would refuse) and records each element's tag, VR and the offsets of its length field and
value, down into sequences, items and encapsulated Pixel Data fragments. It stops quietly
wherever the bytes stop making sense: a mutator then has fewer places to aim at.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX = 0x00020010
IMPLICIT_LE, BIG_ENDIAN = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: at most this many elements are recorded (mutated files can claim millions)
MAX_ELEMENTS = 5000


@dataclass(frozen=True)
class Element:
    """One element, item or delimiter as it lies in the bytes."""

    tag: int
    vr: bytes | None  # None: implicit VR, or an item / delimiter
    start: int  # offset of the tag
    length_at: int  # offset of the length field
    length_size: int  # 2 or 4 bytes
    value_at: int
    length: int  # the length field as stored (UNDEFINED: undefined length)
    little: bool
    depth: int  # 0: top level
    fragment: bool = False  # an item of encapsulated Pixel Data (the first: the offset table)

    @property
    def end(self) -> int:
        """Offset after the value (for defined lengths)."""
        return self.value_at + (0 if self.length == UNDEFINED else self.length)


@dataclass(frozen=True)
class Layout:
    elements: tuple[Element, ...]
    dataset_at: int  # first byte after the file meta group
    implicit: bool
    little: bool
    deflated: bool

    def find(self, tag: int, depth: int | None = 0) -> Element | None:
        for element in self.elements:
            if element.tag == tag and (depth is None or element.depth == depth):
                return element
        return None

    @property
    def fragments(self) -> tuple[Element, ...]:
        """Items of encapsulated Pixel Data, offset table first (delimiters excluded)."""
        return tuple(e for e in self.elements if e.fragment and e.tag == ITEM)

    @property
    def pixel_data_at(self) -> int:
        found = self.find(PIXEL_DATA)
        return found.start if found is not None else 0


class _Walker:
    def __init__(self, data: bytes, implicit: bool, little: bool) -> None:
        self.data, self.implicit, self.little = data, implicit, little
        self.out: list[Element] = []

    def _u(self, fmt: str, at: int) -> int:
        return int(struct.unpack_from(("<" if self.little else ">") + fmt, self.data, at)[0])

    def dataset(self, pos: int, end: int, depth: int, in_item: bool, meta: bool = False) -> int:
        while pos + 8 <= end and len(self.out) < MAX_ELEMENTS:
            group, number = self._u("H", pos), self._u("H", pos + 2)
            tag = group << 16 | number
            if meta and group != 2:
                return pos
            if group == 0xFFFE:
                self.out.append(
                    Element(
                        tag,
                        None,
                        pos,
                        pos + 4,
                        4,
                        pos + 8,
                        self._u("I", pos + 4),
                        self.little,
                        depth,
                    )
                )
                pos += 8
                if tag == ITEM_END and in_item:
                    return pos
                continue
            vr = None if self.implicit else self.data[pos + 4 : pos + 6]
            if vr is None:
                length_at, size = pos + 4, 4
            elif vr in LONG_VRS:
                length_at, size = pos + 8, 4
            else:
                length_at, size = pos + 6, 2
            if length_at + size > end:
                return end
            length = self._u("I" if size == 4 else "H", length_at)
            value_at = length_at + size
            self.out.append(
                Element(tag, vr, pos, length_at, size, value_at, length, self.little, depth)
            )
            is_sequence = vr == b"SQ" or (vr is None and _dictionary_sq(tag))
            if length == UNDEFINED:
                pos = self.items(value_at, end, depth + 1, fragments=tag == PIXEL_DATA)
            elif is_sequence:
                self.items(value_at, min(value_at + length, end), depth + 1, fragments=False)
                pos = value_at + length
            else:
                pos = value_at + length
        return pos

    def items(self, pos: int, end: int, depth: int, fragments: bool) -> int:
        while pos + 8 <= end and len(self.out) < MAX_ELEMENTS:
            tag = self._u("H", pos) << 16 | self._u("H", pos + 2)
            length = self._u("I", pos + 4)
            self.out.append(
                Element(
                    tag,
                    None,
                    pos,
                    pos + 4,
                    4,
                    pos + 8,
                    length,
                    self.little,
                    depth,
                    fragment=fragments,
                )
            )
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                return end
            if fragments:
                if length == UNDEFINED:
                    return end
                pos += length
            elif length == UNDEFINED:
                pos = self.dataset(pos, end, depth + 1, in_item=True)
            else:
                self.dataset(pos, min(pos + length, end), depth + 1, in_item=False)
                pos += length
        return pos


def _dictionary_sq(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def _meta_syntax(data: bytes, elements: list[Element]) -> str | None:
    for element in elements:
        if element.tag == TRANSFER_SYNTAX and element.length != UNDEFINED:
            raw = data[element.value_at : element.value_at + element.length]
            return raw.rstrip(b"\x00 ").decode("ascii", "replace")
    return None


def layout(data: bytes) -> Layout:
    """The element layout of Part 10 or bare-dataset ``data`` (see the module docstring)."""
    pos = 132 if data[128:132] == b"DICM" else 0
    meta = _Walker(data, implicit=False, little=True)
    if data[pos + 4 : pos + 6].isalpha():  # explicit VR: a file meta group, or a bare set
        pos = meta.dataset(pos, len(data), 0, in_item=False, meta=True)
    syntax = _meta_syntax(data, meta.out)
    if syntax is None:  # bare dataset: guess the encoding from its first element
        implicit = not data[pos + 4 : pos + 6].isalpha()
        little = data[pos : pos + 2] != b"\x00\x08"
    else:
        implicit, little = syntax == IMPLICIT_LE, syntax != BIG_ENDIAN
    deflated = syntax == DEFLATED
    body = _Walker(data, implicit=implicit, little=little)
    if not deflated:
        body.dataset(pos, len(data), 0, in_item=False)
    return Layout(tuple(meta.out + body.out), pos, implicit, little, deflated)


# ------------------------------------------------------------------------- bytes
#: interesting 16-bit, 32-bit and byte values
U16 = (
    0,
    1,
    2,
    3,
    7,
    8,
    12,
    15,
    16,
    17,
    31,
    32,
    33,
    64,
    127,
    128,
    255,
    256,
    4095,
    4096,
    32767,
    32768,
    65534,
    65535,
)
U32 = (
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    0xFF,
    0x100,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFE,
    0xFFFFFFFF,
)
BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


def put(data: bytes, at: int, value: bytes) -> bytes:
    return (
        data[:at] + value + data[at + len(value) :] if 0 <= at <= len(data) - len(value) else data
    )


def pack(value: int, size: int, little: bool = True) -> bytes:
    return (value % (1 << (8 * size))).to_bytes(size, "little" if little else "big")


def near(rng: random.Random, original: int, table: tuple[int, ...]) -> int:
    """An interesting value: from ``table``, or near / double / half the original."""
    return rng.choice([*table, original + 1, original - 1, original * 2, original // 2])


def item(value: bytes) -> bytes:
    """An encapsulated Pixel Data item (little endian) holding ``value``."""
    return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(value)) + value
