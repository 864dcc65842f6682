"""Records -> model inputs for torch: :class:`PreprocessCache`, :func:`prefill_cache` and
:class:`CXRDataset`.

The model input of a record is exactly what the service computes for the same file:
:func:`training.datasets.records.read_display_pixels` (``imaging.read_dicom`` for DICOM) then
:func:`imaging.preprocess.preprocess`. It is stored as float16 (normalised values lie in
``[-2, 2]``, where float16 steps are <= 2e-3, i.e. <= 5e-4 in display units, finer than
12-bit data) and handed out as float32; a freshly decoded input goes through the same
float16 rounding, so the first epoch and cached epochs see identical tensors.

Cache design
------------
* Key: SHA-256 of (resolved path, file mtime_ns, file size, resolution, the
  ``imaging.preprocess.NORMALISATION`` record, :data:`CACHE_FORMAT_VERSION`). A changed file,
  another resolution or another normalisation is another key; bump the version when
  ``imaging`` changes how it decodes or resizes.
* Memory: ``key -> float16 array``, filled until ``memory_limit_bytes`` and then not at all
  (no eviction: epochs scan everything in a new order, where LRU would hit nothing and
  "keep the first N" hits N). With a disk directory, only the process that built the cache
  uses memory: DataLoader workers read the disk cache (the OS page cache shares those pages
  between workers, where per-worker dicts would hold one copy each).
* Disk: ``directory/<key[:2]>/<key>.npy``: the float16 image then the ``[rows, columns]``
  int64 array, written to a temporary file in the same folder and ``os.replace``-d into
  place, so concurrent workers/processes never see a half-written entry. A refused image
  leaves ``<key>.refused`` (the error code only), so it is not decoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from imaging.errors import ImagingError
from imaging.geometry import LetterboxGeometry
from imaging.preprocess import NORMALISATION, preprocess
from training.datasets import records as _records
from training.datasets.augment import Augment
from training.datasets.records import Record, content_mask, record_mask

logger = logging.getLogger(__name__)

#: bump when imaging's decode/resize changes in a way NORMALISATION does not describe
CACHE_FORMAT_VERSION = 1
DEFAULT_MEMORY_LIMIT_BYTES = 8 * 2**30
_REFUSED_LOGGED: set[str] = set()


@dataclass(frozen=True)
class CachedInput:
    """``image``: float32 ``(1, R, R)`` normalised model input; ``geometry``: its letterbox."""

    image: npt.NDArray[np.float32]
    geometry: LetterboxGeometry


class RefusedBeforeError(ImagingError):
    """The imaging path refused this file before (recorded in the disk cache)."""

    code = "refused_before"


def decode_model_input(path: Path, resolution: int) -> tuple[npt.NDArray[np.float16], int, int]:
    """Decode ``path`` and preprocess it at ``resolution``: float16 ``(1, R, R)``, rows, cols.

    Raises ``ImagingError`` for files the imaging path refuses.
    """
    return _model_input(_records.read_display_pixels(path), resolution)


def _model_input(
    pixels: npt.NDArray[np.float32], resolution: int
) -> tuple[npt.NDArray[np.float16], int, int]:
    """Display pixels float32 ``(rows, columns)`` in [0, 1] -> the cache entry at ``resolution``."""
    rows, columns = pixels.shape
    image = preprocess(pixels, resolution).image.astype(np.float16)
    return image, int(rows), int(columns)


class PreprocessCache:
    """Decoded + preprocessed model inputs per (file, resolution); see the module docstring.

    ``directory``: the disk cache (None: memory only). ``memory``: keep inputs in memory.
    Thread safe; process safe through the disk (atomic writes). ``stats`` counts, in this
    process: ``memory_hits``, ``disk_hits``, ``decoded``, ``refused``.
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        memory: bool = True,
        memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
    ) -> None:
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.memory = memory
        self.memory_limit_bytes = memory_limit_bytes
        self._owner_pid = os.getpid()
        self._items: dict[str, tuple[npt.NDArray[np.float16], int, int]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "decoded": 0, "refused": 0}

    # Locks do not pickle; DataLoader workers (spawn) and process pools get a fresh one.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @staticmethod
    def key(path: Path, resolution: int) -> str:
        """The cache key of ``path`` at ``resolution`` (changes when the file changes)."""
        st = os.stat(path)
        ident = [str(Path(path).resolve()), st.st_mtime_ns, st.st_size, int(resolution)]
        blob = json.dumps([ident, NORMALISATION, CACHE_FORMAT_VERSION], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _use_memory(self) -> bool:
        return self.memory and (self.directory is None or os.getpid() == self._owner_pid)

    def _file(self, key: str, suffix: str = ".npy") -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}{suffix}"

    def _read_disk(self, key: str) -> tuple[npt.NDArray[np.float16], int, int] | None:
        path = self._file(key)
        try:
            with path.open("rb") as fh:
                image = np.load(fh)
                shape = np.load(fh)
            return image.astype(np.float16, copy=False), int(shape[0]), int(shape[1])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError, IndexError):
            logger.warning("cache entry %s unreadable; decoding again", path.name)
            return None

    def _write_disk(self, key: str, entry: tuple[npt.NDArray[np.float16], int, int]) -> None:
        final = self._file(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, entry[0])
                np.save(fh, np.array([entry[1], entry[2]], dtype=np.int64))
            os.replace(tmp, final)  # atomic: readers see the old state or the whole file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _remember(self, key: str, entry: tuple[npt.NDArray[np.float16], int, int]) -> None:
        if not self._use_memory():
            return
        with self._lock:
            size = entry[0].nbytes
            limit = self.memory_limit_bytes
            if key not in self._items and (limit is None or self._bytes + size <= limit):
                self._items[key] = entry
                self._bytes += size

    def _bump(self, stat: str) -> None:
        with self._lock:
            self.stats[stat] += 1

    def _raise_if_refused(self, key: str) -> None:
        """Raise ``RefusedBeforeError`` if the disk cache holds a refusal marker for ``key``."""
        if self.directory is not None and self._file(key, ".refused").exists():
            self._bump("refused")
            raise RefusedBeforeError(self._file(key, ".refused").read_text().strip())

    def _compute(
        self, record: Record, keyed: list[tuple[int, str]]
    ) -> list[tuple[npt.NDArray[np.float16], int, int]]:
        """Decode ``record`` once and store its entries at each ``(resolution, key)``
        (disk and memory), counted in ``stats["decoded"]``; on a refusal leave a marker
        per key and raise the ``ImagingError``."""
        try:
            pixels = _records.read_display_pixels(record.path)
        except ImagingError as exc:
            self._bump("refused")
            for _, key in keyed if self.directory is not None else ():
                marker = self._file(key, ".refused")
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"{exc.code}\n")
            raise
        entries: list[tuple[npt.NDArray[np.float16], int, int]] = []
        for resolution, key in keyed:
            entry = _model_input(pixels, resolution)
            self._bump("decoded")
            if self.directory is not None:
                self._write_disk(key, entry)
            self._remember(key, entry)
            entries.append(entry)
        return entries

    def get(self, record: Record, resolution: int) -> CachedInput:
        """The model input of ``record`` at ``resolution``; raises ``ImagingError`` if refused."""
        key = self.key(record.path, resolution)
        entry = self._items.get(key) if self._use_memory() else None
        if entry is not None:
            self._bump("memory_hits")
        elif self.directory is not None and (entry := self._read_disk(key)) is not None:
            self._bump("disk_hits")
            self._remember(key, entry)
        else:
            self._raise_if_refused(key)
            entry = self._compute(record, [(resolution, key)])[0]
        image, rows, columns = entry
        geometry = LetterboxGeometry.fit(rows, columns, resolution)
        return CachedInput(image=image.astype(np.float32), geometry=geometry)

    def fill(self, record: Record, resolutions: Sequence[int]) -> int:
        """Put ``record``'s model inputs at every one of ``resolutions`` in the cache,
        decoding the file at most once; returns how many inputs were computed (0: all
        were cached), each counted in ``stats["decoded"]``. Entries already on disk are not
        loaded into memory (``get`` does that when it needs them). Raises ``ImagingError``
        (and leaves a refusal marker per missing resolution) if the file is refused.
        """
        missing: list[tuple[int, str]] = []
        for resolution in dict.fromkeys(int(r) for r in resolutions):
            key = self.key(record.path, resolution)
            self._raise_if_refused(key)
            cached = key in self._items if self._use_memory() else False
            # Read, not just stat: an unreadable entry is recomputed here, not in training.
            if not cached and (self.directory is None or self._read_disk(key) is None):
                missing.append((resolution, key))
        if missing:
            self._compute(record, missing)
        return len(missing)


# ------------------------------------------------------------------------ prefill
@dataclass
class PrefillReport:
    """What :func:`prefill_cache` did: counts and the image ids the imaging path refused."""

    total: int = 0
    decoded: int = 0
    cached: int = 0
    refused: list[str] = field(default_factory=list)


def _single_threaded() -> None:
    cv2.setNumThreads(1)


def _prefill_one(args: tuple[str, str, str, tuple[int, ...]]) -> tuple[str, str]:
    path, image_id, directory, resolutions = args
    cache = PreprocessCache(directory, memory=False)
    record = Record(image_id=image_id, path=Path(path), labels=np.zeros(0, np.float32),
                    patient_id=None)  # fmt: skip
    try:
        computed = cache.fill(record, resolutions)
    except ImagingError:
        return image_id, "refused"
    return image_id, "decoded" if computed else "cached"


def prefill_cache(
    records: Sequence[Record],
    resolution: int | Sequence[int],
    directory: Path | str,
    *,
    workers: int | None = None,
    chunksize: int = 4,
    mp_context: str | None = None,
) -> PrefillReport:
    """Fill the disk cache ``directory`` for ``records`` at ``resolution`` (one or several:
    each file is decoded once for all of them) with a process pool. ``decoded`` counts the
    images that needed any decoding, ``cached`` those already cached at every resolution.

    ``workers`` default: the CPU count; 0 decodes in this process. ``mp_context`` default:
    ``forkserver`` where available, else ``spawn``: never ``fork``, because a forked child of
    a process whose OpenCV/torch thread pools have run can deadlock (OpenCV's does, in
    ``cv2.setNumThreads``). Each worker pays one import of torch (~2-5 s), nothing next to
    decoding thousands of images. Workers run OpenCV single-threaded: the pool is the
    parallelism. Refused images are logged by image id and listed in the report. As with
    any spawned pool, a calling *script* needs the ``if __name__ == "__main__":`` guard.
    """
    report = PrefillReport(total=len(records))
    Path(directory).mkdir(parents=True, exist_ok=True)
    # One resolution or several, Python or numpy integers alike.
    resolutions = tuple(int(r) for r in np.atleast_1d(resolution))
    jobs = [(str(r.path), r.image_id, str(directory), resolutions) for r in records]
    if not jobs:
        return report
    if workers == 0:
        _tally(map(_prefill_one, jobs), report)
    else:
        methods = multiprocessing.get_all_start_methods()
        method = mp_context or ("forkserver" if "forkserver" in methods else "spawn")
        n = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(n, mp_context=context, initializer=_single_threaded) as pool:
            _tally(pool.map(_prefill_one, jobs, chunksize=chunksize), report)
    logger.info("prefill %s px: %d decoded, %d already cached, %d refused", resolutions,
                report.decoded, report.cached, len(report.refused))  # fmt: skip
    return report


def _tally(results: Iterable[tuple[str, str]], report: PrefillReport) -> None:
    for image_id, status in results:
        if status == "refused":
            report.refused.append(image_id)
            logger.warning("image %s refused by the imaging path; skip it", image_id)
        elif status == "decoded":
            report.decoded += 1
        else:
            report.cached += 1


# ------------------------------------------------------------------------ dataset
class CXRDataset(Dataset[dict[str, Any]]):
    """Records as model inputs at ``resolution``.

    Item ``i``: ``image`` float32 ``[1, R, R]`` (normalised as the service does, augmented
    when ``augment`` is given), ``label`` float32 ``[L]`` (NaN = unknown), ``index`` (int, the
    record served) and with ``with_masks`` ``mask`` bool ``[R, R]`` (:func:`record_mask`,
    moved with the augmentation).

    ``cache``: None = a private in-memory :class:`PreprocessCache`. Augmentation randomness:
    with ``augment_seed`` None it comes from torch's global RNG of the process (DataLoader
    seeds workers from its generator, so a seeded loader is reproducible); with a seed, item
    ``i`` of epoch ``e`` (:meth:`set_epoch`) uses ``Generator(seed, e, i)``, independent of
    workers. A record the imaging path refuses is logged once by image id, counted in
    ``refused`` (this process) and replaced by the next record, so batches stay whole.
    """

    def __init__(
        self,
        records: Sequence[Record],
        resolution: int,
        *,
        augment: Augment | None = None,
        with_masks: bool = False,
        cache: PreprocessCache | None = None,
        augment_seed: int | None = None,
    ) -> None:
        self.records = list(records)
        self.resolution = int(resolution)
        LetterboxGeometry.fit(1, 1, self.resolution)  # validates the resolution
        self.augment = augment
        self.with_masks = with_masks
        self.cache = cache if cache is not None else PreprocessCache()
        self.augment_seed = augment_seed
        self.epoch = 0
        self.refused: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (only with ``augment_seed``)."""
        self.epoch = int(epoch)

    def _generator(self, index: int) -> torch.Generator:
        g = torch.Generator()
        if self.augment_seed is None:
            g.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        else:
            seq = np.random.SeedSequence([self.augment_seed, self.epoch, index])
            g.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))
        return g

    def _load(self, index: int) -> tuple[int, CachedInput]:
        n = len(self.records)
        for step in range(n):
            i = (index + step) % n
            record = self.records[i]
            try:
                return i, self.cache.get(record, self.resolution)
            except ImagingError as exc:
                if record.image_id not in self.refused:
                    self.refused.add(record.image_id)
                    if record.image_id not in _REFUSED_LOGGED:
                        _REFUSED_LOGGED.add(record.image_id)
                        logger.warning("image %s refused (%s); serving the next record",
                                       record.image_id, exc.code)  # fmt: skip
        raise RuntimeError(f"every one of the {n} images was refused by the imaging path")

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, cached = self._load(int(index))
        record = self.records[i]
        image = torch.from_numpy(cached.image)
        mask = torch.from_numpy(record_mask(record, cached.geometry)) if self.with_masks else None
        if self.augment is not None and not self.augment.is_identity:
            content = torch.from_numpy(content_mask(cached.geometry))
            image, mask = self.augment.apply(
                image, mask=mask, content=content, generator=self._generator(i)
            )
        item: dict[str, Any] = {
            "image": image.contiguous(),
            "label": torch.from_numpy(np.array(record.labels, dtype=np.float32)),
            "index": i,
        }
        if mask is not None:
            item["mask"] = mask.bool()
        return item


__all__ = [
    "CACHE_FORMAT_VERSION",
    "CXRDataset",
    "CachedInput",
    "PrefillReport",
    "PreprocessCache",
    "decode_model_input",
    "prefill_cache",
]
