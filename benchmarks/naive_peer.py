"""The "naive peer": how most research code serves a chest X-ray classifier.

A FastAPI app with one synchronous route, ``POST /predict`` (raw DICOM body), that per
request decodes and preprocesses the image exactly as sharpcxr does (``read_dicom`` +
``preprocess``: the comparison measures serving, not preprocessing), runs the torch eager
model loaded once at start-up from the same ``.pt`` checkpoint the ONNX file was exported
from, and explains it the usual way: a pytorch-grad-cam ``GradCAM`` built per request on
``model.target_layer`` with ``ClassifierOutputTarget(0)`` (forward + backward), the CAM
(already resized to ``R x R`` and min-max normalised by pytorch-grad-cam) cropped to the
letterbox content, resized to the original grid, thresholded at 0.5, boxes from its
connected components, the mask as a 1-bit PNG. No batching; FastAPI runs the ``def``
route in its threadpool.

It is meant to be honest, not crippled: the model is loaded once, torch uses its default
intra-op threads (all cores), the probability comes from Grad-CAM's own forward pass (no
second forward) and decoding and post-processing run concurrently across requests. Only
the model section is serialised by a lock: pytorch-grad-cam registers its hooks on the
shared model, so two concurrent Grad-CAMs would collect each other's activations and
gradients and return the wrong map.

    NAIVE_PEER_CHECKPOINT=models/sharpcxr-demo-compact-256.pt \
        uv run uvicorn benchmarks.naive_peer:app --host 127.0.0.1 --port 8100

The resolution is the checkpoint's ``model_config["resolution"]`` (override with
``NAIVE_PEER_RESOLUTION``).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Annotated, Any

import cv2
import torch
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxrmodel.checkpoint import load_checkpoint, model_from_checkpoint
from cxrmodel.networks import CXRClassifier
from imaging.dicom import read_dicom
from imaging.errors import ImagingError
from imaging.preprocess import preprocess
from imaging.saliency import mask_png, mask_to_boxes

CHECKPOINT_ENV = "NAIVE_PEER_CHECKPOINT"
RESOLUTION_ENV = "NAIVE_PEER_RESOLUTION"
CAM_THRESHOLD = 0.5

_model_lock = threading.Lock()


@lru_cache(maxsize=1)
def load_model() -> tuple[CXRClassifier, int]:
    """The model of ``$NAIVE_PEER_CHECKPOINT`` (eval, CPU) and its resolution; loaded once."""
    path = os.environ.get(CHECKPOINT_ENV)
    if not path:
        raise RuntimeError(f"set {CHECKPOINT_ENV} to a .pt checkpoint")
    state = load_checkpoint(path)
    model = model_from_checkpoint(state)
    resolution = int(os.environ.get(RESOLUTION_ENV) or state["model_config"]["resolution"])
    return model, resolution


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    load_model()  # at start-up, as research servers do: the first request pays nothing
    yield


app = FastAPI(title="naive peer (torch eager + pytorch-grad-cam per request)", lifespan=_lifespan)


@app.get("/readyz")
def readyz() -> dict[str, Any]:
    _, resolution = load_model()
    return {"status": "ready", "resolution": resolution}


@app.post("/predict")
def predict(
    data: Annotated[bytes, Body(media_type="application/dicom")],
) -> JSONResponse:
    start = time.perf_counter()
    model, resolution = load_model()
    try:
        decoded = read_dicom(data)
    except ImagingError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    model_input = preprocess(decoded.pixels, resolution)
    tensor = torch.from_numpy(model_input.image).unsqueeze(0)  # [1, 1, R, R]
    with _model_lock:
        cam = GradCAM(model=model, target_layers=[model.target_layer])
        grayscale_cam = cam(input_tensor=tensor, targets=[ClassifierOutputTarget(0)])[0]
        probability = float(torch.sigmoid(cam.outputs[0, 0]).item())
        cam.activations_and_grads.release()
    # The CAM covers the R x R letterboxed input; keep the image part, back to the original.
    geometry = model_input.geometry
    content = grayscale_cam[
        geometry.offset_y : geometry.offset_y + geometry.content_rows,
        geometry.offset_x : geometry.offset_x + geometry.content_columns,
    ]
    rows, columns = decoded.pixels.shape
    saliency = cv2.resize(content, (columns, rows), interpolation=cv2.INTER_LINEAR)
    mask = saliency >= CAM_THRESHOLD
    boxes = mask_to_boxes(mask, saliency, decoded.facts.pixel_spacing_mm)
    return JSONResponse(
        {
            "probability": probability,
            "image": {"rows": rows, "columns": columns},
            "mask": {
                "format": "png",
                "rows": rows,
                "columns": columns,
                "data": base64.b64encode(mask_png(mask)).decode("ascii"),
            },
            "boxes": [dataclasses.asdict(box) for box in boxes],
            "elapsed_ms": (time.perf_counter() - start) * 1e3,
        }
    )


__all__ = ["app", "load_model"]
