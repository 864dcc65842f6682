"""Every input that once made the decoder path fail (a codec crash or abort, a hang, a
non-domain exception, memory over the bound) must now decode or be refused.

The files and what fixed each: ``tests/data/fuzz-regressions/README.md``. Each is replayed
through ``read_dicom`` in a decode-pool worker (so a regression shows as a finding rather
than killing pytest), with and without ``min_side``, and its worker's peak RSS growth is
held to the fuzzer's bound.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.fuzz_decoders import Fuzzer

REGRESSIONS = Path(__file__).resolve().parents[1] / "data" / "fuzz-regressions"
FILES = sorted(REGRESSIONS.glob("*.dcm"))


@pytest.fixture(scope="module")
def fuzzer() -> Iterator[Fuzzer]:
    # 5 s per case: each file decodes or is refused in milliseconds once fixed
    with Fuzzer(timeout_s=5.0) as pool:
        yield pool


def test_regression_files_are_small_named_and_documented() -> None:
    assert len(FILES) >= 15
    readme = (REGRESSIONS / "README.md").read_text()
    for path in FILES:
        assert re.fullmatch(r"[0-9a-f]{12}_[a-z0-9-]+\.dcm", path.name), path.name
        assert path.stat().st_size < 400_000, path.name
        assert f"`{path.name}`" in readme, f"{path.name} is not in the README"


@pytest.mark.parametrize("min_side", [None, 16])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name.split("_", 1)[1])
def test_regression_has_a_domain_outcome(fuzzer: Fuzzer, path: Path, min_side: int | None) -> None:
    outcome = fuzzer.decode(path.read_bytes(), min_side)
    assert outcome.kind in ("decoded", "refused"), f"{outcome.code}: {outcome.detail}"
    # these files decode or are refused in milliseconds; CharLS's truncated-stream path
    # took 4-11 s (the pool's 5 s timeout alone would let the faster of those through)
    assert outcome.seconds < 3.0, f"{outcome.seconds:.1f} s"
