"""A planted pixel-decoder plugin for RLE Lossless that misbehaves on command.

Imported in a decode worker through ``SHARPCXR_DECODER_PLUGINS`` (or
``DecodePool(plugins=...)``), it registers with pydicom as the first RLE plugin. On a frame
that contains one of the markers below it does what a broken native codec does; on any
other frame it declines (raises), so pydicom's real RLE plugins decode it as usual. This is
the codec-fault half of the isolation tests: the process must survive each fault.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

import numpy as np
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import RLELossless

from imaging import decoders

ABORT = b"PLANTED-ABORT"
SEGFAULT = b"PLANTED-SEGV"
HANG = b"PLANTED-HANG"
HOG = b"PLANTED-HOG"  # allocates far past any address-space limit
MARKERS = (ABORT, SEGFAULT, HANG, HOG)

DECODER_DEPENDENCIES: dict[str, tuple[str, ...]] = {RLELossless: ()}


def is_available(uid: str) -> bool:
    return uid in DECODER_DEPENDENCIES


def _decode_frame(src: bytes, runner: Any) -> bytearray:
    if ABORT in src:
        os.abort()  # SIGABRT, as a failed assert in C does
    if SEGFAULT in src:
        ctypes.string_at(0)  # SIGSEGV: a read through a null pointer
    if HANG in src:
        while True:  # spins, as a codec stuck on a bad length does
            time.sleep(0.05)
    if HOG in src:
        hog = np.ones(64 * 1024**3 // 8)  # 64 GiB: MemoryError under RLIMIT_AS
        return bytearray(hog[:1].tobytes())
    raise ValueError("not a planted frame")  # pydicom tries the next plugin


def _register() -> None:
    decoder = get_decoder(RLELossless)
    if "planted" not in decoder.available_plugins:
        decoder.add_plugin("planted", (__name__, "_decode_frame"))
    preference = decoders.PLUGIN_PREFERENCE[RLELossless]
    if preference[0] != "planted":
        decoders.PLUGIN_PREFERENCE[RLELossless] = ("planted", *preference)


_register()


def planted_rle(marker: bytes) -> bytes:
    """A valid 64 x 64 RLE Lossless DICOM whose one frame ends with ``marker``."""
    from pydicom.encaps import encapsulate, generate_frames

    from tests.conftest import build_dataset, to_bytes

    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7) % 4096
    ds = build_dataset(pixels)
    ds.compress(RLELossless)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame + marker + (b"\0" if len(marker) % 2 else b"")])
    return to_bytes(ds)
