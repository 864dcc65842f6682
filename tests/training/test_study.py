"""The resolution study: metrics on hand-made cases, splits, and a tiny study end to end."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from cxrmodel.checkpoint import load_checkpoint
from imaging.dicom_writer import write_dicom
from imaging.rle import encode_siim_rle
from sharpcxr.cli import build_parser, main
from training.config import TrainConfig
from training.data import load_records, split_records, split_test_set
from training.datasets import PreprocessCache, Record
from training.study.analysis import _paired_tables, summarise_set
from training.study.cli import config_from_args
from training.study.config import StudyConfig
from training.study.evaluate import Inference, ensemble, localise
from training.study.report import command_line
from training.study.runner import resolution_dir, run_study
from training.study.shift import SHIFT_FACTORS, analyse_shift


# ------------------------------------------------------------------ localisation, by hand
def _record(tmp_path: Path, truth: np.ndarray, name: str = "case") -> Record:
    path = tmp_path / f"{name}.dcm"
    write_dicom(path, np.full(truth.shape, 2000, np.uint16), bits_stored=12)
    return Record(name, path, np.ones(1, np.float32), None, mask_rle=(encode_siim_rle(truth),))


def test_localise_known_iou_percent_in_and_boxes(tmp_path: Path) -> None:
    # 64 x 64 image at R = 64: the letterbox is the identity and the CAM grid is 2 x 2.
    # CAM top row 1, bottom row 0: bilinear between cell centres (rows 16 and 48) crosses
    # 0.5 at row 32, so the saliency mask is rows 0..31, every column.
    truth = np.zeros((64, 64), bool)
    truth[0:16, :] = True  # rows 0..15
    cams = np.array([[[1.0, 1.0], [0.0, 0.0]]], np.float32)
    loc = localise([_record(tmp_path, truth)], cams, 64, PreprocessCache(None))
    assert loc.case_index.tolist() == [0]
    assert loc.iou[0] == pytest.approx(16 / 32)  # intersection 16 rows, union 32 rows
    assert loc.percent_in[0] == pytest.approx(50.0)  # half of the saliency is inside
    # One predicted box (rows 0..31) vs one truth box (rows 0..15): box IoU 0.5 >= 0.1.
    assert (loc.tp[0], loc.fp[0], loc.fn[0]) == (1, 0, 0)


def test_localise_miss_and_negatives(tmp_path: Path) -> None:
    truth = np.zeros((64, 64), bool)
    truth[56:64, 0:8] = True  # bottom-left corner
    negative = Record("neg", tmp_path / "neg.dcm", np.zeros(1, np.float32), None)
    write_dicom(negative.path, np.full((64, 64), 2000, np.uint16), bits_stored=12)
    cams = np.array([[[0.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]], np.float32)
    loc = localise([_record(tmp_path, truth), negative], cams, 64, PreprocessCache(None))
    assert loc.case_index.tolist() == [0]  # negatives have no truth to score against
    assert loc.iou[0] == 0.0 and loc.percent_in[0] == 0.0
    assert (loc.tp[0], loc.fp[0], loc.fn[0]) == (0, 1, 1)


def test_ensemble_normalises_each_fold_cam() -> None:
    a = Inference(
        np.array([1.0]), np.ones(1, np.float32), np.array([[[0.0, 10.0]] * 2], np.float32)
    )
    b = Inference(np.array([3.0]), np.ones(1, np.float32), np.array([[[0.0, 0.1]] * 2], np.float32))
    combined = ensemble([a, b])
    assert combined.logits.tolist() == [2.0]
    # Both folds normalise to [0, 1] first, so the small-scale fold weighs the same.
    np.testing.assert_allclose(combined.cams[0], [[0.0, 1.0]] * 2, atol=1e-5)


# ------------------------------------------------------------------ the set summary, by hand
def _cases(labels: list[int], logits: list[float], sizes: list[float]) -> dict[str, np.ndarray]:
    y = np.array(labels, np.float32)
    positives = np.flatnonzero(y > 0.5)
    return {
        "labels": y, "logits": np.array(logits), "fold_logits": np.array([logits, logits]),
        "sizes": np.array(sizes), "image_ids": np.array([f"i{k}" for k in range(len(y))]),
        "loc.case_index": positives,
        "loc.iou": np.linspace(0.2, 0.4, positives.size),
        "loc.percent_in": np.full(positives.size, 50.0),
        "loc.tp": np.ones(positives.size, np.int64),
        "loc.fp": np.r_[np.ones(1, np.int64), np.zeros(positives.size - 1, np.int64)],
        "loc.fn": np.zeros(positives.size, np.int64),
    }  # fmt: skip


def test_summarise_set_known_answers() -> None:
    nan = float("nan")
    # Positives: a small one ranked below every negative, two large ones above.
    cases = _cases(
        [1, 1, 1, 0, 0, 0], [-5.0, 4.0, 5.0, 0.0, 1.0, 2.0], [0.1, 0.9, 0.8, nan, nan, nan]
    )
    s = summarise_set(cases, resamples=200, seed=0)
    assert s["auroc"]["auc"] == pytest.approx(6 / 9)
    assert s["fold_aurocs"] == pytest.approx([6 / 9, 6 / 9])
    assert s["by_size"]["small"]["positives"] == 1
    assert s["by_size"]["large"]["auroc"]["auc"] == 1.0
    # One small positive: AUROC needs two per class, so it is reported as unknown.
    assert s["by_size"]["small"]["auroc"] is None
    loc = s["localisation"]
    assert loc["positives"] == 3
    assert loc["miou"]["value"] == pytest.approx(0.3)
    assert loc["percent_in"]["value"] == pytest.approx(50.0)
    assert loc["box_precision"]["value"] == pytest.approx(3 / 4)  # 3 TP, 1 FP
    assert loc["box_accuracy"]["value"] == pytest.approx(1.0)
    assert loc["miou"]["low"] <= 0.3 <= loc["miou"]["high"]


def test_shift_analysis_known_answers(tmp_path: Path) -> None:
    y = np.array([1, 1, 1, 0, 0, 0], np.float32)
    good = np.array([3.0, 2.0, 1.0, 0.0, -1.0, -2.0])  # perfect ranking
    worse = np.array([3.0, 2.0, -3.0, 0.0, -1.0, -2.0])  # one positive below all negatives
    np.savez(tmp_path / "shift.npz", **{
        "0.name": np.array("none"), "0.labels": y, "0.logits": good,
        "1.name": np.array("storage"), "1.labels": y, "1.logits": good * 10,
        "2.name": np.array("curve"), "2.labels": y, "2.logits": worse,
    })  # fmt: skip
    result = analyse_shift(tmp_path / "shift.npz")
    assert result["none"]["auroc"]["auc"] == 1.0 and "p" not in result["none"]
    assert result["storage"]["difference"] == 0.0 and result["storage"]["p"] == 1.0
    assert result["curve"]["difference"] == pytest.approx(6 / 9 - 1.0)


def test_pairwise_tables_are_column_minus_row_with_holm() -> None:
    nan = float("nan")
    low = _cases([1, 1, 1, 0, 0, 0], [-5.0, 4.0, 5.0, 0.0, 1.0, 2.0], [nan] * 6)
    high = _cases([1, 1, 1, 0, 0, 0], [3.0, 4.0, 5.0, 0.0, 1.0, 2.0], [nan] * 6)
    high["loc.iou"] = low["loc.iou"] + 0.1
    tables = _paired_tables({"64": low, "512": high}, ["64", "512"], "t")
    row = tables["auroc"][0]
    assert (row["a"], row["b"]) == ("64", "512")
    assert row["difference"] == pytest.approx(1.0 - 6 / 9)  # 512 minus 64
    assert tables["iou"][0]["mean_difference"] == pytest.approx(0.1)
    assert row["p_holm"] == pytest.approx(row["p"])  # one comparison: nothing to adjust
    # Too few cases of a class: reported as not tested, never a crash.
    one = _cases([1, 0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0], [nan] * 6)
    untested = _paired_tables({"64": one, "512": one}, ["64", "512"], "t")["auroc"][0]
    assert np.isnan(untested["p"]) and np.isnan(untested["p_holm"])


# ------------------------------------------------------------------ splits
def test_test_hold_out_is_fixed_and_never_trained_on(tmp_path: Path) -> None:
    from imaging.phantoms import write_phantom_dataset

    write_phantom_dataset(tmp_path / "pool", 30, size=64, seed=3)
    cfg = TrainConfig(dataset="phantoms", data_root=str(tmp_path / "pool"), folds=3,
                      test_fraction=1 / 3, seed=0)  # fmt: skip
    records = load_records(cfg)
    development, test = split_test_set(cfg, records)
    assert len(test) == 10 and len(development) == 20
    test_ids = {r.image_id for r in test}
    assert sum(r.labels[0] for r in test) in (4, 5, 6)  # stratified: about half positive
    for fold in range(3):
        train, val = split_records(dataclasses.replace(cfg, fold=fold), records)
        assert not test_ids & {r.image_id for r in train + val}
        assert len(train) + len(val) == 20
    # Training's seed changes the folds, not the test cases of a study with the same seed.
    again = split_test_set(dataclasses.replace(cfg, fold=2, resolution=64), records)[1]
    assert {r.image_id for r in again} == test_ids
    assert split_test_set(dataclasses.replace(cfg, test_fraction=0.0), records)[1] == []


# ------------------------------------------------------------------ the study end to end
def _tiny(tmp_path: Path, **overrides: object) -> StudyConfig:
    cfg = StudyConfig(
        name="tiny", reports_dir=str(tmp_path / "reports"), runs_dir=str(tmp_path / "runs"),
        data_dir=str(tmp_path / "data"), phantoms_development=36, phantoms_external=16,
        phantom_size=128, resolutions=(64, 96), folds=2, epochs=1, bootstrap_resamples=50,
        grid_cases=2,
    )  # fmt: skip
    return dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]


def test_tiny_study_writes_report_and_resumes(tmp_path: Path) -> None:
    cfg = _tiny(tmp_path)
    out = run_study(cfg)
    for name in (
        "report.md",
        "results.json",
        "auroc_vs_resolution.png",
        "gap_heatmap.png",
        "localisation_vs_resolution.png",
        "auroc_by_size.png",
        "saliency_grid.png",
    ):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    run = results["runs"]["standard"]["96"]
    assert set(run) == {"test", "site_b"}
    assert run["test"]["n"] == 12 and run["site_b"]["n"] == 16
    assert len(run["test"]["fold_aurocs"]) == 2
    assert results["gaps"]["standard"]["64"]["site_b"]["low"] <= \
        results["gaps"]["standard"]["64"]["site_b"]["difference"]  # fmt: skip
    table = results["resolution_tests"]["standard"]["test"]["auroc"]
    assert [(r["a"], r["b"]) for r in table] == [("64", "96")] and 0 <= table[0]["p_holm"] <= 1
    shift = results["shift"]["standard"]["64"]
    assert list(shift) == list(SHIFT_FACTORS) and "difference" not in shift["none"]
    assert all(0 <= shift[f]["p"] <= 1 for f in SHIFT_FACTORS if f != "none")
    report = (out / "report.md").read_text()
    assert "shift ablation" in report
    assert "| 64 px |" in report and "paired DeLong" in report and command_line(cfg) in report

    # A finished resolution is not retrained; a finished fold is not retrained either.
    best = resolution_dir(cfg, "standard", 64) / "fold-0" / "best.pt"
    stamp = best.stat().st_mtime_ns
    (resolution_dir(cfg, "standard", 96) / "resolution.json").unlink()
    (out / "discussion.md").write_text("## Discussion\n\nHand-written findings.\n")
    run_study(cfg)
    assert best.stat().st_mtime_ns == stamp
    assert (resolution_dir(cfg, "standard", 96) / "resolution.json").exists()
    assert "Hand-written findings." in (out / "report.md").read_text()

    # Settings that shape the runs cannot change under the same name.
    with pytest.raises(ValueError, match="epochs: 1 -> 2"):
        run_study(dataclasses.replace(cfg, epochs=2))

    # The anti-aliasing axis reuses the finished standard runs and adds its comparison.
    run_study(dataclasses.replace(cfg, downsamples=("standard", "blurpool"), resolutions=(64,)))
    assert best.stat().st_mtime_ns == stamp
    results = json.loads((out / "results.json").read_text())
    assert set(results["downsample_tests"]["blurpool"]["64"]) == {"test", "site_b"}
    assert "Anti-aliasing against standard" in (out / "report.md").read_text()


def test_hyper_parameter_search_per_resolution(tmp_path: Path) -> None:
    import optuna

    from training.hpo import SEARCH_SPACE

    cfg = _tiny(tmp_path, resolutions=(64,), hpo_trials=2, shift_ablation=False)
    run_study(cfg)
    out = resolution_dir(cfg, "standard", 64)
    summary = json.loads((out / "resolution.json").read_text())
    params = summary["hyper_parameters"]
    assert params["searched"] is True
    assert SEARCH_SPACE["lr"][0] <= params["lr"] <= SEARCH_SPACE["lr"][1]
    storage = f"sqlite:///{(out / 'hpo' / 'optuna.db').resolve()}"
    study = optuna.load_study(study_name="study", storage=storage)
    assert len(study.trials) == 2 and study.best_params["lr"] == params["lr"]
    # Every fold trained with the best trial's parameters.
    for fold in range(cfg.folds):
        state = load_checkpoint(out / f"fold-{fold}" / "best.pt")
        assert state["train_config"]["lr"] == params["lr"]


def test_cli_round_trip_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _tiny(tmp_path, downsamples=("standard", "flc"), hpo_trials=2, shift_ablation=False)
    argv = shlex.split(command_line(cfg))[1:]
    args = build_parser().parse_args(argv)
    assert config_from_args(args) == cfg
    assert main(["study", "--downsample", "maxpool"]) == 2
    assert "downsample must be one of standard, blurpool" in capsys.readouterr().err
    assert main(["study", "--external", "nih.v2=/data/nih"]) == 2
    assert "external set names" in capsys.readouterr().err
    assert main(["study", "--external", "/data/nih"]) == 2
    assert "--external takes NAME=ROOT" in capsys.readouterr().err
    assert "--no-shift-ablation" in command_line(cfg)
    assert main(["study", "--report-only", "--runs-dir", str(tmp_path / "none")]) == 1
    assert "no finished runs" in capsys.readouterr().err
    (tmp_path / "empty" / "phantom-compact").mkdir(parents=True)
    empty = ["--runs-dir", str(tmp_path / "empty"), "--reports-dir", str(tmp_path / "r")]
    assert main(["study", "--report-only", *empty]) == 1
    assert "no finished resolution" in capsys.readouterr().err
