"""Small real models for the service tests: compact DenseNets trained on phantoms.

The demo models (``make models``, ~12 minutes) are git-ignored, so a clean clone has none.
The service tests train their own, smaller and fixed-length (epochs, not a time budget, so
the result does not depend on machine speed), with the same code path as the demo:
phantoms -> ``training.loop.train`` -> ``training.publish.publish`` (ONNX with in-graph
CAM + ``.pt`` + manifest entry with sha256). The models are cached under
``.pytest_cache/sharpcxr-service-models/<key>``, keyed by the configuration and the
sources of the training code, so a second run reuses them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".pytest_cache" / "sharpcxr-service-models"


@dataclass(frozen=True)
class FixtureModels:
    native_size: int = 512
    n_train: int = 384
    n_test: int = 32
    resolutions: tuple[int, ...] = (128, 256)
    max_epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 11


#: imaging modules on the upload path that do not change how the uncompressed phantom
#: files the models train on decode (compressed codecs, bomb and codestream checks, the
#: gate, RLE masks): editing them need not retrain the fixture models, and their own
#: tests (tests/imaging) cover them. dicom.py is read_dicom, which training uses: its
#: uncompressed path is pinned by test_dicom_real's reference values. Everything else
#: is hashed.
NOT_IN_TRAINING = frozenset(
    {"bombs.py", "codestreams.py", "decoders.py", "dicom.py", "gate.py", "reduced.py", "rle.py"}
)


def _key(cfg: FixtureModels) -> str:
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for folder in ("training", "imaging", "cxrmodel"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if (
                folder == "imaging"
                and path.parent.name == "imaging"
                and path.name in NOT_IN_TRAINING
            ):
                continue
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_fixture_models(cfg: FixtureModels = FixtureModels()) -> Path:
    """A models directory (manifest + ONNX + .pt) for ``cfg``; built once, then cached.

    Concurrent callers (two pytest runs) wait on a lock file rather than race to build
    the same key."""
    out = CACHE / _key(cfg)
    if (out / "models" / "manifest.json").is_file():
        return out / "models"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "models" / "manifest.json").is_file():
            return out / "models"
        return _build(cfg, out)


def _build(cfg: FixtureModels, out: Path) -> Path:
    from imaging.phantoms import write_phantom_dataset
    from training.config import TrainConfig
    from training.loop import train
    from training.publish import evaluate_checkpoint, publish

    work = out.with_suffix(".partial")
    shutil.rmtree(work, ignore_errors=True)
    train_root, test_root = work / "data" / "train", work / "data" / "test_site_a"
    write_phantom_dataset(train_root, cfg.n_train, site="a", size=cfg.native_size, seed=cfg.seed)
    write_phantom_dataset(
        test_root, cfg.n_test, site="a", size=cfg.native_size, seed=cfg.seed + 1000
    )
    previous: str | None = None
    for resolution in cfg.resolutions:
        result = train(
            TrainConfig(
                dataset="phantoms",
                data_root=str(train_root),
                resolution=resolution,
                architecture="compact",
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                holdout_fraction=0.2,
                augment_strength=0.5,
                init_from=previous,
                max_epochs=cfg.max_epochs,
                num_workers=0,
                out_dir=str(work / "runs" / str(resolution)),
                cache_dir=str(work / "cache"),
                seed=cfg.seed,
                progress=False,
                resume=False,
                gradient_checkpointing="off",
            )
        )
        previous = str(result.best_checkpoint)
        evaluate_checkpoint(result.best_checkpoint, {"test_site_a": str(test_root)})
        publish(
            result.best_checkpoint, work / "models", name="sharpcxr-test-compact", tensorrt="off"
        )
    shutil.rmtree(work / "data", ignore_errors=True)
    shutil.rmtree(work / "cache", ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return out / "models"


if __name__ == "__main__":
    import time

    t = time.monotonic()
    print(build_fixture_models(), f"{time.monotonic() - t:.0f} s")
