"""Mutators of DICOM files for decoder fuzzing, and the fuzz cases built from them.

Each mutator is a pure function ``(data, rng) -> bytes | None``: the same bytes and the
same ``random.Random`` state give the same output; None when it has nothing to aim at
(a JPEG marker mutator on an RLE file). Three kinds:

* anywhere: bit flips, byte sets, truncation, insertion, deletion;
* the DICOM structure (offsets from :mod:`tests.fuzz.dicom_layout`): an element's length
  field or VR, the values of the image pixel module and the display chain (Rows, Columns,
  Bits Allocated/Stored, Pixel Representation, Photometric, Number of Frames, window,
  rescale, VOI / Modality LUT Sequences), sequence and item delimiters and undefined
  lengths, encapsulated item lengths and the Basic Offset Table;
* inside the codestream of the first frame (:mod:`tests.fuzz.codestream_mutations`):
  JPEG SOF, DHT, DQT and other markers; JPEG 2000 / HTJ2K SIZ, COD, SOT, QCD; JPEG-LS
  SOF55, SOS and LSE; the RLE header; the deflated stream (and, here, structural
  mutations of the inflated dataset, deflated again).

:func:`make_case` draws case ``index`` of run ``run_seed``: a seed file (round robin over
:func:`tests.fuzz.decoder_seeds.seeds`), one to three mutators, and a ``min_side`` (which
sends JPEG 2000 / HTJ2K through the reduced decode of ``imaging/reduced.py``).
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.fuzz import codestream_mutations as cs
from tests.fuzz.decoder_seeds import DEFLATE, J2K, JPEG, JPEGLS, NATIVE, RLE, Seed, seeds
from tests.fuzz.dicom_layout import (
    BYTES,
    ITEM,
    ITEM_END,
    SEQUENCE_END,
    U16,
    U32,
    Element,
    item,
    layout,
    near,
    pack,
    put,
)

Mutator = Callable[[bytes, random.Random], bytes | None]


def _position(data: bytes, rng: random.Random) -> int:
    """Anywhere, half the time in the header (it is small against the pixel data); 0 in
    empty data."""
    if not data:
        return 0
    header_end = layout(data).pixel_data_at or len(data)
    return rng.randrange(header_end if rng.random() < 0.5 and header_end else len(data))


# ------------------------------------------------------------------------- anywhere
def bit_flip(data: bytes, rng: random.Random) -> bytes | None:
    if not data:
        return None
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        at = _position(data, rng)
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def byte_set(data: bytes, rng: random.Random) -> bytes | None:
    if not data:
        return None
    out = bytearray(data)
    for _ in range(rng.choice((1, 2, 4))):
        out[_position(data, rng)] = rng.choice((*BYTES, rng.randrange(256)))
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes | None:
    if not data:
        return None
    cut = rng.choice((rng.randrange(len(data)), len(data) - rng.randrange(1, 64), 132, 128))
    return data[: max(cut, 0)]


def insert(data: bytes, rng: random.Random) -> bytes | None:
    if not data:
        return None
    at = _position(data, rng)
    if rng.random() < 0.5:
        chunk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 65)))
    else:  # a copy of other bytes of the file: plausible tags and lengths
        start = rng.randrange(len(data))
        chunk = data[start : start + rng.randrange(1, 257)]
    return data[:at] + chunk + data[at:]


def delete(data: bytes, rng: random.Random) -> bytes | None:
    if not data:
        return None
    at = _position(data, rng)
    return data[:at] + data[at + rng.randrange(1, 129) :]


# ------------------------------------------------------------------------- DICOM structure
def _pick(elements: tuple[Element, ...] | list[Element], rng: random.Random) -> Element | None:
    return rng.choice(elements) if elements else None


def element_length(data: bytes, rng: random.Random) -> bytes | None:
    """An element's (or item's) length field set to an odd, off-by-one, huge or undefined
    value."""
    target = _pick(layout(data).elements, rng)
    if target is None:
        return None
    table = U32 if target.length_size == 4 else U16
    value = near(rng, target.length, (*table, len(data), len(data) - target.value_at + 2))
    return put(data, target.length_at, pack(value, target.length_size, target.little))


_VRS = (
    b"OB",
    b"OW",
    b"UN",
    b"SQ",
    b"US",
    b"SS",
    b"UL",
    b"IS",
    b"DS",
    b"CS",
    b"UT",
    b"LO",
    b"AT",
    b"FD",
    b"OF",
    b"ZZ",
    b"\x00\x00",
)


def element_vr(data: bytes, rng: random.Random) -> bytes | None:
    """An explicit VR replaced (2- and 4-byte length forms swap, so the parse shifts)."""
    target = _pick([e for e in layout(data).elements if e.vr is not None], rng)
    if target is None:
        return None
    return put(data, target.start + 4, rng.choice(_VRS))


#: image pixel module elements (US, 2 bytes) patched in place
_US_TAGS = {
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "SamplesPerPixel": 0x00280002,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "HighBit": 0x00280102,
    "PixelRepresentation": 0x00280103,
}


def pixel_module_value(data: bytes, rng: random.Random) -> bytes | None:
    """Rows, Columns, Bits Allocated/Stored, High Bit, Pixel Representation or Samples per
    Pixel set in place to an interesting 16-bit value."""
    found = layout(data)
    candidates = [e for t in _US_TAGS.values() if (e := found.find(t)) is not None]
    target = _pick([e for e in candidates if e.length == 2], rng)
    if target is None:
        return None
    original = int.from_bytes(
        data[target.value_at : target.value_at + 2], "little" if target.little else "big"
    )
    value = near(rng, original, (*U16, 9, 10, 11, 13, 14, 24))
    return put(data, target.value_at, pack(value, 2, target.little))


def _edited(data: bytes, edit: Callable[[Dataset], None]) -> bytes | None:
    """``data`` read by pydicom, edited and written back (None when pydicom cannot)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(data), force=True)
            edit(ds)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=False)
    except Exception:  # a seed pydicom cannot round-trip with this edit: not applicable
        return None
    return buffer.getvalue()


_NUMBERS = (
    "0",
    "-1",
    "1",
    "0.5",
    "1e-300",
    "1e308",
    "-1e308",
    "NaN",
    "inf",
    "-inf",
    "abc",
    "",
    "65536",
    "4294967296",
    "1\\2\\3",
    " 7 ",
)
_STRING_VALUES: dict[str, tuple[str, ...]] = {
    "PhotometricInterpretation": (
        "MONOCHROME1",
        "MONOCHROME2",
        "RGB",
        "YBR_FULL_422",
        "PALETTE COLOR",
        "monochrome2",
        "",
        "MONOCHROME3",
        "\x00",
    ),
    "NumberOfFrames": ("0", "1", "2", "-1", "1000000", "abc", "", "1.5", "2147483648"),
    "WindowCenter": _NUMBERS,
    "WindowWidth": _NUMBERS,
    "RescaleSlope": _NUMBERS,
    "RescaleIntercept": _NUMBERS,
    "VOILUTFunction": ("SIGMOID", "LINEAR_EXACT", "LINEAR", "BOGUS", ""),
    "PixelSpacing": ("0\\0", "-1\\1", "abc", "1", "1e308\\1e308", "NaN\\NaN"),
}


def header_value(data: bytes, rng: random.Random) -> bytes | None:
    """Photometric, Number of Frames, window, rescale, VOI LUT function or pixel spacing
    set (or added) to an odd value, through pydicom (written as given, not validated)."""
    keyword = rng.choice(sorted(_STRING_VALUES))
    value = rng.choice(_STRING_VALUES[keyword])
    vr = {"PhotometricInterpretation": "CS", "NumberOfFrames": "IS", "VOILUTFunction": "CS"}

    def edit(ds: Dataset) -> None:
        if keyword in ds:
            del ds[keyword]
        ds.add_new(keyword, vr.get(keyword, "DS"), None)
        ds[keyword]._value = value  # bypass validation: raw odd text is the point

    return _edited(data, edit)


def lut_sequence(data: bytes, rng: random.Random) -> bytes | None:
    """A VOI LUT or Modality LUT Sequence item with an odd descriptor or data."""
    entries = rng.choice((0, 1, 2, 255, 256, 4096, 65535))
    first = rng.choice((0, -1, -32768, 32767, 65535, 4095))
    bits = rng.choice((0, 1, 8, 12, 16, 17, 32, 64))
    length = rng.choice((0, 1, 2, entries, max(entries - 1, 0), entries + 7, 70000))

    def edit(ds: Dataset) -> None:
        item = Dataset()
        item.add_new("LUTDescriptor", "SS" if first < 0 else "US", [entries, first, bits])
        item.add_new("LUTData", "OW", bytes(rng.randrange(256) for _ in range(length * 2)))
        if rng.random() < 0.5:
            ds.VOILUTSequence = Sequence([item])
        else:
            item.ModalityLUTType = rng.choice(("HU", "US", "OD"))
            ds.ModalityLUTSequence = Sequence([item])
        if rng.random() < 0.3:
            ds.VOILUTSequence = Sequence([])

    return _edited(data, edit)


def sequence_delimiter(data: bytes, rng: random.Random) -> bytes | None:
    """Break a sequence: an item or delimiter tag swapped, its length set, one removed or
    duplicated, or a defined-length element made undefined."""
    found = layout(data)
    marks = [e for e in found.elements if e.tag in (ITEM, ITEM_END, SEQUENCE_END)]
    target = _pick(marks, rng)
    if target is None:
        return None
    op = rng.randrange(4)
    if op == 0:
        tag = rng.choice((ITEM, ITEM_END, SEQUENCE_END, 0xFFFEE0FF, 0x00080016))
        raw = pack(tag >> 16, 2, target.little) + pack(tag & 0xFFFF, 2, target.little)
        return put(data, target.start, raw)
    if op == 1:
        return put(data, target.length_at, pack(rng.choice(U32), 4, target.little))
    if op == 2:
        return data[: target.start] + data[target.start + 8 :]
    return data[: target.start] + data[target.start : target.start + 8] + data[target.start :]


def encapsulated_item(data: bytes, rng: random.Random) -> bytes | None:
    """An encapsulated Pixel Data item's length or tag changed, a fragment split, emptied,
    duplicated or removed."""
    fragments = layout(data).fragments
    target = _pick(fragments, rng)
    if target is None:
        return None
    op = rng.randrange(5)
    if op == 0:
        value = near(rng, target.length, (*U32, target.length + 2, target.length - 2))
        return put(data, target.length_at, pack(value, 4))
    body = data[target.value_at : target.end]
    before, after = data[: target.start], data[target.end :]
    if op == 1 and len(body) > 2:
        cut = rng.randrange(1, len(body) // 2 + 1) * 2
        return before + item(body[:cut]) + item(body[cut:]) + after
    if op == 2:
        return before + item(b"") + after
    if op == 3:
        return before + item(body) + item(body) + after
    return before + after


def basic_offset_table(data: bytes, rng: random.Random) -> bytes | None:
    """The Basic Offset Table given bogus, extra, unaligned or missing offsets."""
    fragments = layout(data).fragments
    if not fragments:
        return None
    bot = fragments[0]
    op = rng.randrange(4)
    if op == 0:
        table = [rng.choice((*U32, len(data))) for _ in range(rng.choice((1, 2, 3, 1000)))]
        value = struct.pack(f"<{len(table)}I", *table)
    elif op == 1:
        value = bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 3, 5, 6))))
    elif op == 2:
        value = b""
    else:
        value = struct.pack("<I", rng.choice((2, 3, 7)))
    return data[: bot.start] + item(value) + data[bot.end :]


def deflate_inner(data: bytes, rng: random.Random) -> bytes | None:
    """A structural mutation of the inflated dataset, deflated again."""
    found = layout(data)
    if not found.deflated:
        return None
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:  # bounded: a bomb from deflate_stream is not worth inflating here
        inner = inflater.decompress(data[found.dataset_at :], 16 << 20)
    except zlib.error:
        return None
    if inflater.unconsumed_tail or not inner:
        return None
    mutated = rng.choice(
        (element_length, element_vr, pixel_module_value, sequence_delimiter, bit_flip, truncate)
    )(inner, rng)
    if mutated is None:
        return None
    pack = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return data[: found.dataset_at] + pack.compress(mutated) + pack.flush()


# ------------------------------------------------------------------------- cases
GENERIC: dict[str, Mutator] = {
    "bit_flip": bit_flip,
    "byte_set": byte_set,
    "truncate": truncate,
    "insert": insert,
    "delete": delete,
}
STRUCTURE: dict[str, Mutator] = {
    "element_length": element_length,
    "element_vr": element_vr,
    "pixel_module_value": pixel_module_value,
    "header_value": header_value,
    "lut_sequence": lut_sequence,
    "sequence_delimiter": sequence_delimiter,
}
ENCAPSULATED: dict[str, Mutator] = {
    "encapsulated_item": encapsulated_item,
    "basic_offset_table": basic_offset_table,
}
CODESTREAM: dict[str, dict[str, Mutator]] = {
    NATIVE: {},
    DEFLATE: {"deflate_stream": cs.deflate_stream, "deflate_inner": deflate_inner},
    RLE: {"rle_header": cs.rle_header},
    JPEG: {"jpeg_sof": cs.jpeg_sof, "jpeg_tables": cs.jpeg_tables, "jpeg_markers": cs.jpeg_markers},
    JPEGLS: {"jpegls_header": cs.jpegls_header, "jpeg_markers": cs.jpeg_markers},
    J2K: {"j2k_siz": cs.j2k_siz, "j2k_cod": cs.j2k_cod, "j2k_markers": cs.j2k_markers},
}
ALL_MUTATORS: dict[str, Mutator] = {
    **GENERIC,
    **STRUCTURE,
    **ENCAPSULATED,
    **{k: v for d in CODESTREAM.values() for k, v in d.items()},
}


def mutators_for(seed: Seed) -> list[tuple[str, int]]:
    """``(name, weight)`` of the mutators that apply to ``seed``: codestream ones weigh 8,
    encapsulation 3, the other structural ones 2, generic 1 (so that about half of a
    compressed seed's mutations land inside its codestream)."""
    out = [(name, 1) for name in GENERIC] + [(name, 2) for name in STRUCTURE]
    if seed.codec not in (NATIVE, DEFLATE):
        out += [(name, 3) for name in ENCAPSULATED]
    return out + [(name, 8) for name in CODESTREAM[seed.codec]]


@dataclass(frozen=True)
class Case:
    """One fuzz input and how it was made (enough to make it again)."""

    run_seed: int
    index: int
    seed: str
    transfer_syntax: str  # name
    mutators: tuple[str, ...]
    min_side: int | None
    data: bytes


def make_case(run_seed: int, index: int) -> Case:
    """Case ``index`` of run ``run_seed`` (deterministic; independent of other cases)."""
    rng = random.Random(f"decoder-fuzz:{run_seed}:{index}")
    pool = seeds()
    seed = pool[index % len(pool)]
    names, weights = zip(*mutators_for(seed), strict=True)
    data, applied = seed.data, []
    for _ in range(rng.choices((1, 2, 3), weights=(6, 3, 1))[0]):
        for _attempt in range(4):
            name = rng.choices(names, weights=weights)[0]
            mutated = ALL_MUTATORS[name](data, rng) if data else None
            if mutated is not None and mutated != data:
                data = mutated
                applied.append(name)
                break
    reduced = seed.codec == J2K and rng.random() < 0.6
    min_side = rng.choice((8, 16, 24, 32, 48, 64, 100)) if reduced or rng.random() < 0.1 else None
    return Case(run_seed, index, seed.name, seed.syntax_name, tuple(applied), min_side, data)
