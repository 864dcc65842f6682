"""PreprocessCache: disk hits across instances, invalidation on change, prefill, refusals."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imaging.dicom import read_dicom
from imaging.dicom_writer import write_dicom
from imaging.errors import ImagingError
from imaging.phantoms import write_phantom_dataset
from imaging.preprocess import preprocess
from training.datasets import CXRDataset, PreprocessCache, load_phantoms, prefill_cache
from training.datasets import records as records_module
from training.datasets.records import Record
from training.datasets.torch_dataset import RefusedBeforeError

R = 64


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Counts the cache's calls into the decoder (in this process)."""
    calls: list[Path] = []
    original: Callable[[Path], Any] = records_module.read_display_pixels

    def counting(path: Path) -> Any:
        calls.append(path)
        return original(path)

    monkeypatch.setattr(records_module, "read_display_pixels", counting)
    return calls


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    root = tmp_path_factory.mktemp("ph")
    write_phantom_dataset(root, 6, size=128, seed=1)
    return load_phantoms(root)


def test_cached_input_is_the_imaging_path(phantoms: list[Record], tmp_path: Path) -> None:
    record = phantoms[0]
    got = PreprocessCache(tmp_path).get(record, R)
    expected = preprocess(read_dicom(record.path.read_bytes()).pixels, R)
    assert got.image.dtype == np.float32 and got.image.shape == (1, R, R)
    assert got.geometry == expected.geometry
    # float16 storage: within half a float16 step at |x| <= 2
    assert np.abs(got.image - expected.image).max() <= 1e-3


def test_disk_cache_hit_on_a_second_instance(
    phantoms: list[Record], tmp_path: Path, decode_calls: list[Path]
) -> None:
    first = CXRDataset(phantoms, R, cache=PreprocessCache(tmp_path))
    a = [first[i]["image"] for i in range(len(first))]
    assert len(decode_calls) == len(phantoms)
    [first[i] for i in range(len(first))]  # second epoch: memory
    assert len(decode_calls) == len(phantoms) and first.cache.stats["memory_hits"] == 6

    cache = PreprocessCache(tmp_path)  # a later run: empty memory, same directory
    second = CXRDataset(phantoms, R, cache=cache)
    b = [second[i]["image"] for i in range(len(second))]
    assert len(decode_calls) == len(phantoms)  # no decode at all
    assert cache.stats == {"memory_hits": 0, "disk_hits": 6, "decoded": 0, "refused": 0}
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    other = CXRDataset(phantoms, 32, cache=PreprocessCache(tmp_path))  # another resolution
    assert other[0]["image"].shape == (1, 32, 32) and len(decode_calls) == len(phantoms) + 1


def test_cache_invalidated_when_the_file_changes(tmp_path: Path, decode_calls: list[Path]) -> None:
    path = tmp_path / "x.dcm"
    write_dicom(path, np.full((40, 40), 1000, np.uint16))
    record = Record("x", path, np.zeros(1, np.float32), None)
    before = PreprocessCache(tmp_path / "c").get(record, R).image
    assert PreprocessCache(tmp_path / "c").get(record, R).image.tolist() == before.tolist()
    assert len(decode_calls) == 1
    stat = path.stat()
    write_dicom(path, np.tile(np.arange(40, dtype=np.uint16) * 100, (40, 1)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = PreprocessCache(tmp_path / "c").get(record, R).image
    assert len(decode_calls) == 2 and not np.array_equal(before, after)


def test_refused_file_is_remembered(tmp_path: Path, decode_calls: list[Path]) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    good = tmp_path / "good.dcm"
    write_dicom(good, np.full((40, 40), 1000, np.uint16))
    bad = Record("bad", path, np.zeros(1, np.float32), None)
    ok = Record("good", good, np.zeros(1, np.float32), None)
    ds = CXRDataset([bad, ok], R, cache=PreprocessCache(tmp_path / "c"))
    assert ds[0]["index"] == 1 and ds.refused == {"bad"}
    again = CXRDataset([bad, ok], R, cache=PreprocessCache(tmp_path / "c"))
    assert again[0]["index"] == 1
    assert sum(p == path for p in decode_calls) == 1  # the marker spares the second decode


def garbage_record(folder: Path) -> Record:
    """A record whose file is not DICOM at all: the imaging path refuses it."""
    path = folder / "bad.dcm"
    path.write_bytes(b"garbage" * 20)
    return Record("bad-image", path, np.zeros(1, np.float32), None)


def test_prefill_in_parallel_then_no_decodes(
    phantoms: list[Record], tmp_path: Path, decode_calls: list[Path]
) -> None:
    bad = garbage_record(tmp_path)
    report = prefill_cache([*phantoms, bad], R, tmp_path / "c", workers=2)
    assert (report.total, report.decoded, report.cached) == (7, 6, 0)
    assert report.refused == ["bad-image"]
    assert prefill_cache(phantoms[:2], R, tmp_path / "c", workers=0).cached == 2
    cache = PreprocessCache(tmp_path / "c")
    ds = CXRDataset(phantoms, R, cache=cache)
    [ds[i] for i in range(len(ds))]
    assert decode_calls == [] and cache.stats["disk_hits"] == 6


def test_prefill_several_resolutions_decodes_each_file_once(
    phantoms: list[Record], tmp_path: Path, decode_calls: list[Path]
) -> None:
    report = prefill_cache(phantoms, (R, 2 * R), tmp_path / "c", workers=0)
    assert (report.decoded, report.cached) == (6, 0)
    assert sorted(decode_calls) == sorted(r.path for r in phantoms)  # once per file
    # A third resolution decodes again once; the two cached ones are not recomputed.
    decode_calls.clear()
    again = prefill_cache(phantoms[:2], (R, 2 * R, 4 * R), tmp_path / "c", workers=0)
    assert (again.decoded, again.cached) == (2, 0) and len(decode_calls) == 2
    decode_calls.clear()
    for resolution in (R, 2 * R, 4 * R):
        cache = PreprocessCache(tmp_path / "c")
        ds = CXRDataset(phantoms[:2], resolution, cache=cache)
        items = [ds[i] for i in range(len(ds))]
        assert cache.stats["disk_hits"] == 2 and items[0]["image"].shape[-1] == resolution
        # The same bytes as a direct decode at that resolution.
        direct = CXRDataset(phantoms[:1], resolution)[0]["image"]
        torch.testing.assert_close(items[0]["image"], direct, atol=0, rtol=0)
    assert len(decode_calls) == 3  # only the direct decodes above


def test_fill_marks_refusals_and_repairs_unreadable_entries(
    phantoms: list[Record], tmp_path: Path, decode_calls: list[Path]
) -> None:
    bad = garbage_record(tmp_path)
    cache = PreprocessCache(tmp_path / "c", memory=False)
    with pytest.raises(ImagingError):
        cache.fill(bad, (R, 2 * R))
    # A marker per resolution: neither get nor a second fill decodes the file again.
    with pytest.raises(RefusedBeforeError):
        PreprocessCache(tmp_path / "c").get(bad, 2 * R)
    with pytest.raises(RefusedBeforeError):
        cache.fill(bad, (R,))
    assert decode_calls.count(bad.path) == 1
    # An unreadable cache entry is computed again by fill, not left for training.
    assert cache.fill(phantoms[0], (R,)) == 1
    entry = cache._file(cache.key(phantoms[0].path, R))
    entry.write_bytes(b"not numpy")
    assert cache.fill(phantoms[0], (R,)) == 1 and cache.fill(phantoms[0], (R,)) == 0
    assert PreprocessCache(tmp_path / "c").get(phantoms[0], R).image.shape == (1, R, R)


def test_memory_limit_stops_filling(phantoms: list[Record], decode_calls: list[Path]) -> None:
    cache = PreprocessCache(memory_limit_bytes=2 * R * R * 2)  # room for two float16 inputs
    ds = CXRDataset(phantoms, R, cache=cache)
    for _ in range(2):
        [ds[i] for i in range(len(ds))]
    assert cache.stats["memory_hits"] == 2 and len(decode_calls) == 10
