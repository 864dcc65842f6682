"""The training loop end to end on tiny phantom sets: train, resume, evaluate, export, HPO."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cxrmodel.checkpoint import load_checkpoint, model_from_checkpoint, use_channels_last
from cxrmodel.networks import build_model
from cxrmodel.ood import load_statistics
from imaging.phantoms import write_phantom_dataset
from training.config import TrainConfig, default_batch_size
from training.loop import train
from training.publish import evaluate_checkpoint, protocol_summary, publish
from training.schedule import cosine_lr


@pytest.fixture(scope="module")
def phantom_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    roots = {}
    for name, site, seed in (("train", "a", 0), ("test-b", "b", 1)):
        write_phantom_dataset(root / name, 12, site=site, size=128, seed=seed)
        roots[name] = root / name
    return roots


def tiny_config(roots: dict[str, Path], out: Path, **overrides: object) -> TrainConfig:
    base = TrainConfig(
        dataset="phantoms", data_root=str(roots["train"]), resolution=64,
        architecture="compact", batch_size=4, max_epochs=2, num_workers=0,
        out_dir=str(out), cache_dir=str(out.parent / "cache"), progress=False,
        holdout_fraction=0.34, augment_strength=0.5,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_protocol_defaults() -> None:
    cfg = TrainConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.lr_factor, cfg.lr_patience) == (3e-4, 1e-4, 0.1, 2)
    assert cfg.early_stop_patience == 10
    assert [default_batch_size(r) for r in (64, 256, 512, 1024)] == [64, 16, 16, 12]
    assert TrainConfig(resolution=1024).checkpointing_enabled()
    assert not TrainConfig(resolution=512).checkpointing_enabled()
    with pytest.raises(ValueError, match="dataset"):
        TrainConfig(dataset="mnist").validate()
    assert (cfg.lr_schedule, cfg.keep) == ("plateau", "best")  # the protocol; the rest is opt-in
    with pytest.raises(ValueError, match="keep must be"):
        TrainConfig(keep="first").validate()
    # The manifest's one-line protocol says when a model departs from it.
    assert protocol_summary(cfg).startswith("Wollek et al. (BCE, AdamW, LR/10 on plateau")
    departed = protocol_summary(TrainConfig(lr_schedule="cosine", keep="last"))
    assert "with departures" in departed and "cosine" in departed and "last epoch" in departed
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="step").validate()
    with pytest.raises(ValueError, match="warmup_fraction"):
        TrainConfig(lr_schedule="cosine", warmup_fraction=1.0).validate()


def test_cosine_lr_warms_up_then_decays_to_zero() -> None:
    assert cosine_lr(1e-3, 0.0, 0.1) == 0.0
    assert cosine_lr(1e-3, 0.05, 0.1) == pytest.approx(5e-4)  # half-way through warm-up
    assert cosine_lr(1e-3, 0.1, 0.1) == pytest.approx(1e-3)  # the peak
    assert cosine_lr(1e-3, 0.55, 0.1) == pytest.approx(5e-4)  # half-way through the decay
    assert cosine_lr(1e-3, 1.0, 0.1) == pytest.approx(0.0, abs=1e-15)
    assert cosine_lr(1e-3, 1.7, 0.1) == pytest.approx(0.0, abs=1e-15)  # clamped past the end
    assert cosine_lr(1e-3, 0.0, 0.0) == pytest.approx(1e-3)  # no warm-up: start at the peak
    lrs = [cosine_lr(1.0, p / 100, 0.05) for p in range(5, 101)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))  # monotone after warm-up


def test_cosine_schedule_in_training_follows_steps(
    phantom_roots: dict[str, Path], tmp_path: Path
) -> None:
    # 2 epochs x 2 steps, no time budget: the run's progress is counted in steps.
    cfg = tiny_config(phantom_roots, tmp_path / "cosine", lr=1e-3, lr_schedule="cosine",
                      warmup_fraction=0.25, max_train_batches=2)  # fmt: skip
    history = train(cfg).history
    # The recorded LR is that of each epoch's last step: global steps 1 and 3 of 4.
    assert history[0]["lr"] == pytest.approx(cosine_lr(1e-3, 1 / 4, 0.25))  # the peak
    assert history[1]["lr"] == pytest.approx(cosine_lr(1e-3, 3 / 4, 0.25))
    assert history[1]["lr"] < history[0]["lr"]
    # last.pt keeps the progress, so a resumed run continues the curve (test_schedule.py).
    assert load_checkpoint(tmp_path / "cosine" / "last.pt")["schedule"] == {"progress": 0.75}
    # No ReduceLROnPlateau involvement: the plateau run keeps its LR after 2 epochs.
    plateau = train(tiny_config(phantom_roots, tmp_path / "plateau", lr=1e-3,
                                max_train_batches=2)).history  # fmt: skip
    assert [h["lr"] for h in plateau] == [1e-3, 1e-3]


def test_channels_last_model_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = build_model("compact", "standard").eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        expected = model(x)
        fast = use_channels_last(model)
        assert fast.features.conv0.weight.is_contiguous(memory_format=torch.channels_last)
        assert fast.features.denseblock1.denselayer1.conv2.weight.is_contiguous(
            memory_format=torch.channels_last
        )
        torch.testing.assert_close(fast(x), expected, atol=1e-5, rtol=1e-5)
    # A channels-last state dict rebuilds into either format.
    state = {"model_state": fast.state_dict(),
             "model_config": {"architecture": "compact", "downsample": "standard",
                              "num_classes": 1}}  # fmt: skip
    with torch.no_grad():
        for channels_last in (False, True):
            rebuilt = model_from_checkpoint(state, channels_last=channels_last)
            torch.testing.assert_close(rebuilt(x), expected, atol=1e-5, rtol=1e-5)


def test_train_resume_evaluate_export(phantom_roots: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config(phantom_roots, tmp_path / "run")
    result = train(cfg)
    assert result.epochs_run == 2 and result.best_checkpoint.exists()
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and last["train_config"]["resolution"] == 64
    assert len(last["history"]) == 2

    # Resume: max_epochs 3 continues from epoch 2, not from scratch.
    resumed = train(dataclasses.replace(cfg, max_epochs=3))
    assert resumed.epochs_run == 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2

    metrics = evaluate_checkpoint(result.best_checkpoint, {"site_b": str(phantom_roots["test-b"])})
    assert metrics["site_b"]["n"] == 12 and 0.0 <= metrics["site_b"]["auroc"] <= 1.0

    models = tmp_path / "models"
    entry = publish(result.best_checkpoint, models, name="tiny", tensorrt="off")
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["models"][0]["name"] == "tiny" and manifest["models"][0]["resolution"] == 64
    assert "synthetic" in entry["intended_use"].lower()
    assert "site_b" in entry["metrics"]
    session = ort.InferenceSession(str(models / entry["files"]["onnx"]["path"]),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    x = np.random.default_rng(0).standard_normal((3, 1, 64, 64)).astype(np.float32)
    logit, cam, embedding = session.run(["logit", "cam", "embedding"], {"image": x})
    assert logit.shape == (3, 1) and cam.shape == (3, 2, 2)
    assert entry["outputs"]["embedding"] == [None, embedding.shape[1]]
    weights = torch.load(models / entry["files"]["pt"]["path"], weights_only=False)
    assert weights["model_config"]["resolution"] == 64
    # Calibration and OOD, fitted on the checkpoint's own split, travel with the model.
    calibration, ood = entry["calibration"], entry["ood"]
    assert calibration["temperature"] > 0 and "site_b" in calibration["ece"]
    assert {"before", "after", "nll_before", "nll_after"} <= set(calibration["ece"]["validation"])
    assert ood["method"] == "mahalanobis" and ood["threshold"] > 0 and "site_b" in ood["flagged"]
    stats = load_statistics(models / entry["files"]["ood"]["path"])
    assert stats.size == embedding.shape[1]
    assert "ece" not in entry["metrics"]["site_b"]  # not twice: calibration holds it


def test_cli_train_and_export(phantom_roots: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli-run"
    cmd = [sys.executable, "-m", "sharpcxr.cli", "train", "--dataset", "phantoms",
           "--data-root", str(phantom_roots["train"]), "--resolution", "64",
           "--architecture", "compact", "--batch-size", "4", "--max-epochs", "1",
           "--num-workers", "0", "--out-dir", str(out), "--no-progress",
           "--cache-dir", str(tmp_path / "cache"), "--holdout-fraction", "0.34",
           "--test", f"b={phantom_roots['test-b']}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["epochs_run"] == 1 and "b" in summary["test"]
    # A relative --out, as `make models` uses, resolved against the working directory.
    exported = subprocess.run(
        [sys.executable, "-m", "sharpcxr.cli", "export", summary["best_checkpoint"],
         "--out", "models", "--tensorrt", "off"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "models" / "manifest.json").exists()
    bad = subprocess.run([sys.executable, "-m", "sharpcxr.cli", "train", "--dataset", "mnist"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "invalid choice: 'mnist'" in bad.stderr
    assert "phantoms" in bad.stderr  # the allowed values are listed


def test_hpo_search_with_shared_sqlite_storage(
    phantom_roots: dict[str, Path], tmp_path: Path
) -> None:
    from training.hpo import best_summary, run_search

    cfg = tiny_config(phantom_roots, tmp_path / "hpo", max_epochs=1)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    run_search(cfg, 2, storage=storage, study_name="t")
    study = run_search(cfg, 1, storage=storage, study_name="t")  # a second worker joins
    summary = best_summary(study)
    assert summary["trials"] == 3 and summary["best"] is not None
    assert set(summary["best"]["params"]) == {"lr", "weight_decay", "augment_strength"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_distributed_data_parallel_on_cpu(phantom_roots: dict[str, Path], tmp_path: Path) -> None:
    """Two processes under torchrun (gloo backend) train one model together."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", "-m", "sharpcxr.cli", "train", "--dataset", "phantoms",
           "--data-root", str(phantom_roots["train"]), "--resolution", "64",
           "--architecture", "compact", "--batch-size", "2", "--max-epochs", "1",
           "--num-workers", "0", "--out-dir", str(out), "--no-progress",
           "--cache-dir", str(tmp_path / "cache"), "--holdout-fraction", "0.34"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "best.pt").exists()


def test_time_budget_stops_mid_epoch(phantom_roots: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config(phantom_roots, tmp_path / "budget", max_epochs=5, time_budget_s=0.0)
    result = train(cfg)
    # One training step, then the budget is spent: validate, checkpoint, stop.
    assert result.stopped_because == "time_budget" and result.epochs_run == 1
    assert len(load_checkpoint(tmp_path / "budget" / "last.pt")["history"]) == 1


def test_model_card_lists_every_model() -> None:
    from training.model_card import model_card

    manifest = {"models": [
        {"name": "m", "resolution": r, "architecture": "compact", "downsample": "standard",
         "threshold": 0.5, "intended_use": "Synthetic demo, not for clinical use",
         "metrics": {"validation": {"auroc": 0.7}, "test_site_a": {"auroc": 0.8, "n": 10},
                     "test_site_b": {"auroc": None, "n": 10}},
         "training": {"data": "data/x", "config": {"init_from": None}}}
        for r in (256, 512)
    ]}  # fmt: skip
    manifest["models"][0]["calibration"] = {
        "temperature": 0.5,
        "ece": {"test_site_a": {"before": 0.2, "after": 0.1, "nll_before": 0.7,
                                "nll_after": 0.6, "n": 10}},
    }  # fmt: skip
    manifest["models"][0]["ood"] = {"threshold": 7.25,
                                    "flagged": {"test_site_a": {"rate": 0.05}}}  # fmt: skip
    card = model_card(manifest)
    assert card.count("| m |") == 2 and "0.800 (10)" in card and "n/a (10)" in card
    assert "not for clinical use" in card
    assert "| 256 | 0.500 | test_site_a | 10 | 0.200 -> 0.100 | 0.700 -> 0.600 | 5.0% |" in card
    assert "256 px 7.25" in card and "512 px n/a" in card


def test_early_stop_after_patience_epochs_without_improvement(
    phantom_roots: dict[str, Path], tmp_path: Path
) -> None:
    # No training steps: the validation loss cannot improve after the first epoch.
    cfg = tiny_config(phantom_roots, tmp_path / "early", max_epochs=6, early_stop_patience=2,
                      max_train_batches=0, augment_strength=0.0)  # fmt: skip
    result = train(cfg)
    assert result.stopped_because == "early_stop" and result.epochs_run == 3


def test_keep_last_keeps_the_final_epoch(phantom_roots: dict[str, Path], tmp_path: Path) -> None:
    # No training steps: every epoch validates the same model, so "best" (strictly better
    # AUROC) stays at epoch 0, while "last" keeps the final epoch.
    for keep, expected in (("best", 0), ("last", 2)):
        cfg = tiny_config(phantom_roots, tmp_path / keep, max_epochs=3, max_train_batches=0,
                          augment_strength=0.0, keep=keep)  # fmt: skip
        result = train(cfg)
        assert result.best_epoch == expected
        assert load_checkpoint(result.best_checkpoint)["epoch"] == expected
