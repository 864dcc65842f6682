"""CheXpert (Irvin et al. 2019): a CSV of image paths with 14 report-derived observations.

CSV columns (``train.csv``/``valid.csv`` of CheXpert-v1.0 and -small): ``Path, Sex, Age,
Frontal/Lateral, AP/PA`` and the 14 observations of :data:`CHEXPERT_LABELS`, each ``1.0``
(positive), ``0.0`` (negative), ``-1.0`` (uncertain) or blank (not mentioned).

Label conventions (what the numbers become in ``Record.labels``):

* blank (not mentioned in the report) -> **0**, negative: the convention of the CheXpert
  paper's baselines and of nearly all work on it (an unmentioned finding is taken as absent).
* ``-1.0`` (uncertain) depends on ``uncertain``:

  - ``"ignore"`` (U-Ignore, the default): NaN, masked out of the loss (``Record.labels``
    NaN = unknown);
  - ``"zeros"`` (U-Zeros): 0;
  - ``"ones"`` (U-Ones): 1;
  - ``"random"``: U-Ones with label-smoothing regularisation (U-Ones+LSR, Pham et al.,
    "Interpreting chest X-rays via CNNs that exploit hierarchical disease dependencies and
    uncertainty labels", 2019/2021): each uncertain label becomes a soft target drawn once,
    at load time, from Uniform(0.55, 0.85) (:data:`RANDOM_UNCERTAIN_RANGE`). Draws come from
    ``numpy.random.default_rng([seed, row])`` where ``row`` is the 0-based data row of the
    CSV (before filtering), so the value of an image does not depend on filtering or on
    which labels are selected (all 14 are drawn, then the selected ones are kept).

Patient id: parsed from ``Path`` (``.../patientNNNNN/studyM/viewK_frontal.jpg``). Images are
found at ``root / Path`` or, when ``root`` is the ``CheXpert-v1.0[-small]`` folder itself,
at ``root / Path`` minus its first component.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path

import numpy as np

from training.datasets.records import PNEUMOTHORAX, Record

logger = logging.getLogger(__name__)

#: the 14 observations in the CSV's column order
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones", "random")
#: U-Ones+LSR range of Pham et al.
RANDOM_UNCERTAIN_RANGE = (0.55, 0.85)

_PATIENT = re.compile(r"(patient\d+)")


def chexpert_label_names(labels: str) -> tuple[str, ...]:
    """``("Pneumothorax",)`` for ``"pneumothorax"``, :data:`CHEXPERT_LABELS` for ``"all"``."""
    if labels == "pneumothorax":
        return (PNEUMOTHORAX,)
    if labels == "all":
        return CHEXPERT_LABELS
    raise ValueError(f"labels must be 'pneumothorax' or 'all', not {labels!r}")


def _value(text: str) -> float:
    """CSV cell -> 1.0 / 0.0 / -1.0, blank -> 0.0 (not mentioned = negative)."""
    text = text.strip()
    if not text:
        return 0.0
    value = float(text)
    if value not in (1.0, 0.0, -1.0):
        raise ValueError(f"CheXpert label values are 1.0, 0.0, -1.0 or blank, got {text!r}")
    return value


def apply_uncertain_policy(
    raw: np.ndarray, policy: str, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Map raw values (1/0/-1, float ``[14]``) to training targets; see the module docstring."""
    out = np.asarray(raw, dtype=np.float32).copy()
    uncertain = out == -1.0
    if policy == "ignore":
        out[uncertain] = math.nan
    elif policy == "zeros":
        out[uncertain] = 0.0
    elif policy == "ones":
        out[uncertain] = 1.0
    elif policy == "random":
        if rng is None:
            raise ValueError("the random policy needs a generator")
        # Drawn for every column, used where uncertain: a row's draws never depend on its values.
        draws = rng.uniform(*RANDOM_UNCERTAIN_RANGE, size=out.shape).astype(np.float32)
        out[uncertain] = draws[uncertain]
    else:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, not {policy!r}")
    return out


def _resolve(root: Path, rel: str) -> Path | None:
    candidate = root / rel
    if candidate.is_file():
        return candidate
    parts = Path(rel).parts
    if len(parts) > 1:
        candidate = root.joinpath(*parts[1:])
        if candidate.is_file():
            return candidate
    return None


def load_chexpert(
    csv_path: Path,
    root: Path,
    labels: str = "pneumothorax",
    uncertain: str = "ignore",
    frontal_only: bool = True,
    seed: int = 0,
) -> list[Record]:
    """Records of a CheXpert CSV, in CSV order (conventions: module docstring).

    ``labels``: ``"pneumothorax"`` -> ``[Pneumothorax]``, ``"all"`` -> the 14
    :data:`CHEXPERT_LABELS`. ``frontal_only`` keeps ``Frontal/Lateral == "Frontal"`` rows.
    ``image_id`` = ``Path`` without its suffix. Rows whose file is missing are skipped and
    counted in a warning.
    """
    names = chexpert_label_names(labels)
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, not {uncertain!r}")
    csv_path, root = Path(csv_path), Path(root)
    records: list[Record] = []
    missing = lateral = 0
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in reader.fieldnames or []]
        absent = [c for c in ("Path", "Frontal/Lateral", *CHEXPERT_LABELS) if c not in fields]
        if absent:
            raise ValueError(f"{csv_path.name}: missing columns {absent}")
        reader.fieldnames = fields
        columns = [CHEXPERT_LABELS.index(n) for n in names]
        for row_index, row in enumerate(reader):
            if frontal_only and row["Frontal/Lateral"].strip() != "Frontal":
                lateral += 1
                continue
            rel = row["Path"].strip()
            path = _resolve(root, rel)
            if path is None:
                missing += 1
                continue
            raw = np.array([_value(row[n] or "") for n in CHEXPERT_LABELS], dtype=np.float32)
            rng = np.random.default_rng([seed, row_index]) if uncertain == "random" else None
            targets = apply_uncertain_policy(raw, uncertain, rng)
            match = _PATIENT.search(rel)
            records.append(
                Record(
                    image_id=str(Path(rel).with_suffix("")),
                    path=path,
                    labels=targets[columns].copy(),
                    patient_id=match.group(1) if match else None,
                )
            )
    if missing:
        logger.warning("CheXpert %s: %d rows without an image skipped", csv_path.name, missing)
    logger.info(
        "CheXpert %s: %d images (%d non-frontal dropped), labels=%s, uncertain=%s",
        csv_path.name,
        len(records),
        lateral,
        labels,
        uncertain,
    )
    return records


__all__ = [
    "CHEXPERT_LABELS",
    "RANDOM_UNCERTAIN_RANGE",
    "UNCERTAIN_POLICIES",
    "apply_uncertain_policy",
    "chexpert_label_names",
    "load_chexpert",
]
