"""Decoder fuzzing (issue #16): mutated DICOM files must decode or be refused, nothing else.

Every outcome of ``read_dicom`` (with and without ``min_side``, in a decode pool worker so
a codec crash is seen rather than suffered) must be a :class:`imaging.dicom.DecodedImage`
or an :class:`imaging.errors.ImagingError`; through ``POST /v1/predict`` on a real
server, a 200 or a 4xx JSON error. A crash, a timeout, the pool's memory refusal, any
other exception or peak-RSS growth over the bound is a finding: the test fails and
prints it (save the input under ``tests/data/fuzz-regressions/``). Seeds, mutators and
the runner: ``tests/fuzz/``, ``benchmarks/fuzz_decoders.py``.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.fuzz_decoders import RSS_BOUND_BYTES, Fuzzer, fuzz
from imaging.decoders import DECODABLE_TRANSFER_SYNTAXES
from imaging.dicom import read_dicom
from tests.conftest import make_dicom
from tests.fuzz import codestream_mutations as cs
from tests.fuzz.decoder_mutations import ALL_MUTATORS, make_case, mutators_for
from tests.fuzz.decoder_seeds import J2K, phantom, seeds
from tests.fuzz.dicom_layout import ITEM_END, PIXEL_DATA, SEQUENCE_END, UNDEFINED, layout

#: the default suite's run: fixed, so CI is reproducible (about 25 s on the 2-core machine)
DEFAULT_CASES, DEFAULT_SEED = 400, 1616
#: the slow run (``make test-all``)
SLOW_CASES, SLOW_SEED = 10_000, 16


def _judge(report: dict[str, Any]) -> None:
    findings = report["findings"]
    if not findings:
        return
    lines = "\n".join(
        f"  {f['kind']}: {f['seed']} {f['mutators']} min_side={f['min_side']} {f['detail']}"
        for f in findings[:20]
    )
    pytest.fail(f"{len(findings)} decoder fuzz findings:\n{lines}")


# ------------------------------------------------------------------------- seeds and mutators
def test_every_decodable_transfer_syntax_has_a_grayscale_single_frame_seed() -> None:
    covered = {seed.transfer_syntax for seed in seeds()}
    assert set(DECODABLE_TRANSFER_SYNTAXES) <= covered
    for seed in seeds():
        decoded = read_dicom(seed.data)
        assert decoded.pixels.ndim == 2 and decoded.facts.rows > 1, seed.name
        if seed.codec == J2K and seed.name.startswith("made-"):
            assert read_dicom(seed.data, min_side=16).reduction > 1, seed.name
    by_name = {seed.name: seed.data for seed in seeds()}
    little = read_dicom(by_name["made-ExplicitVRLittleEndian"]).pixels
    for name in (
        "made-ImplicitVRLittleEndian",
        "made-ExplicitVRBigEndian",
        "made-DeflatedExplicitVRLittleEndian",
        "made-RLELossless",
        "made-JPEGLSLossless",
        "made-JPEG2000Lossless",
        "made-HTJ2KLossless",
    ):
        assert (read_dicom(by_name[name]).pixels == little).all(), name  # lossless: identical


def test_layout_walks_sequences_items_and_fragments() -> None:
    by_name = {seed.name: seed for seed in seeds()}
    found = layout(by_name["made-JPEG2000Lossless"].data)
    pixel = found.find(PIXEL_DATA)
    assert pixel is not None and pixel.length == UNDEFINED and pixel.vr == b"OB"
    assert len(found.fragments) == 2 and found.fragments[1].length > 100  # table + frame
    assert any(e.tag == ITEM_END and e.depth > 0 for e in found.elements)  # undefined item
    assert any(e.tag == SEQUENCE_END for e in found.elements)
    rows = found.find(0x00280010)
    data = by_name["made-JPEG2000Lossless"].data
    assert (
        rows is not None and int.from_bytes(data[rows.value_at : rows.value_at + 2], "little") == 96
    )
    big = layout(by_name["made-ExplicitVRBigEndian"].data)
    rows = big.find(0x00280010)
    assert rows is not None and not big.little
    assert layout(by_name["made-DeflatedExplicitVRLittleEndian"].data).deflated


def test_mutators_are_pure_and_aim_where_they_say() -> None:
    for seed in seeds():
        for name, _weight in mutators_for(seed):
            first = ALL_MUTATORS[name](seed.data, random.Random(5))
            again = ALL_MUTATORS[name](seed.data, random.Random(5))
            assert first == again, (seed.name, name)
    by_name = {seed.name: seed for seed in seeds()}
    j2k = by_name["made-HTJ2KLossless"].data
    frame = layout(j2k).fragments[1]
    changed = cs.j2k_siz(j2k, random.Random(3))
    assert changed is not None and changed[: frame.value_at] == j2k[: frame.value_at]
    assert changed[frame.value_at + 2 : frame.value_at + 4] == b"\xff\x51"  # SIZ still there
    assert cs.jpeg_sof(j2k, random.Random(3)) is None  # no JPEG SOF in a J2K codestream
    assert cs.rle_header(by_name["made-RLELossless"].data, random.Random(1)) is not None
    assert make_case(7, 123) == make_case(7, 123)


# ------------------------------------------------------------------------- runs
def test_short_fuzz_run_has_only_domain_outcomes() -> None:
    report = fuzz(DEFAULT_CASES, DEFAULT_SEED)
    outcomes = report["outcomes"]
    assert outcomes["cases"] == DEFAULT_CASES
    # the mutations reach both sides: some images still decode, most are refused
    assert outcomes["decoded"] > 20 and sum(outcomes["refused"].values()) > 100
    assert report["reduced_decodes"] > 0  # the reduced J2K path was exercised
    assert report["rss_growth_mib"]["measured_cases"] > DEFAULT_CASES * 0.9
    assert set(report["by_transfer_syntax"]) >= {seed.syntax_name for seed in seeds()}
    _judge(report)


@pytest.mark.slow
def test_long_fuzz_run_has_only_domain_outcomes() -> None:
    report = fuzz(SLOW_CASES, SLOW_SEED)
    assert report["outcomes"]["cases"] == SLOW_CASES
    _judge(report)


def test_fuzzer_measures_peak_rss_growth_per_case() -> None:
    """The RSS measurement works: a 2000 x 2000 image grows the worker's peak by at least
    its float32 display pixels (16 MB), a 96 x 128 one by little; over a bound it is a
    ``memory`` finding."""
    big = make_dicom(phantom(2000, 2000, 12))
    small = next(seed.data for seed in seeds() if seed.name == "made-ExplicitVRLittleEndian")
    with Fuzzer(rss_bound_bytes=12 << 20) as fuzzer:
        grown = fuzzer.decode(big, None)
        quiet = fuzzer.decode(small, None)
    assert grown.rss_growth_bytes is not None and grown.rss_growth_bytes >= 16_000_000
    assert grown.kind == "finding" and grown.code == "memory"
    assert quiet.kind == "decoded" and quiet.rss_growth_bytes is not None
    assert quiet.rss_growth_bytes < 12 << 20 < RSS_BOUND_BYTES


# ------------------------------------------------------------------------- the upload path
HTTP_CASES = 32


POOL_CODES = ("decoder_crashed", "decode_timeout", "decode_memory_exceeded")


def _post_cases(url: str, count: int, seed: int) -> tuple[Counter[str], list[str], list[str]]:
    """POST ``count`` mutated files: outcome counts, decode-worker findings (a 422 with a
    pool code: a crash, hang or memory exhaustion the isolation caught) and other problems
    (not a 200 or a 4xx JSON error, or the service not ready after)."""
    outcomes: Counter[str] = Counter()
    pool: list[str] = []
    other: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for index in range(count):
            case = make_case(seed, index)
            response = client.post(
                "/v1/predict", content=case.data, headers={"Content-Type": "application/dicom"}
            )
            if response.status_code == 200:
                outcomes["200"] += 1
                continue
            try:
                code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            outcomes[f"{response.status_code} {code}"] += 1
            what = f"{response.status_code} {code}: {case.seed} {case.mutators} {case.min_side}"
            if code in POOL_CODES:
                pool.append(what)
            elif not 400 <= response.status_code < 500 or not isinstance(code, str):
                other.append(what)
        ready = client.get("/readyz").status_code
    if ready != 200:
        other.append(f"/readyz answered {ready} after the fuzz cases")
    return outcomes, pool, other


def test_upload_path_answers_mutated_files_with_200_or_4xx(
    models_dir: Path, tmp_path: Path
) -> None:
    from tests.e2e.conftest import Server

    server = Server(
        models_dir, tmp_path / "service.log", default_resolution="256", decode_timeout_s="10"
    )
    try:
        outcomes, pool, other = _post_cases(server.url, HTTP_CASES, DEFAULT_SEED + 1)
        alive = server.process.poll() is None
    finally:
        server.stop()
    assert alive, "the service died during the upload fuzz cases"
    assert not other, "upload fuzz findings:\n" + "\n".join(other)
    assert sum(outcomes.values()) == HTTP_CASES
    assert outcomes["200"] > 0 and any(k.startswith("400") for k in outcomes)
    assert not pool, "upload fuzz findings:\n" + "\n".join(pool)
