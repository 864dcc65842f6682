# syntax=docker/dockerfile:1.7
#
# sharpcxr container images. Targets:
#
#   cpu     the serving image (ONNX Runtime on CPU, no torch), the default of docker-compose.yml
#             docker build --target cpu -t sharpcxr:cpu .
#   gpu     ONNX Runtime with CUDA, torch (CUDA buffers) and TensorRT 10, on the CUDA runtime
#             docker build --target gpu -t sharpcxr:gpu .   (run with --gpus 1)
#   models  optional: builds the demo models (`make models`) in Docker and exports them
#             docker build --target models --output type=local,dest=models .
#
# Models are not baked in: the images expect a model directory (manifest.json beside the
# model files) mounted read-only at /models, e.g. `make models` on the host, then
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/models:/models:ro" sharpcxr:cpu
# Every Python dependency comes from uv.lock (`uv sync --frozen`); the only exception is
# TensorRT in the gpu target (see there).

# ---------------------------------------------------------------------------------------------
# uv itself, from its official image (pinned: the lock's format belongs to a uv version).
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# ---------------------------------------------------------------------------------------------
# What every build stage shares: uv, and uv's documented settings for Docker builds.
FROM python:3.12.12-slim-bookworm AS uv-base
COPY --from=uv /uv /uvx /bin/
# UV_COMPILE_BYTECODE: compile .pyc at build time, so start-up does not (and the venv can
# stay read-only). UV_LINK_MODE=copy: the cache is a mount, hard links into it would not
# survive the layer. UV_PROJECT_ENVIRONMENT: one venv path in every stage, copied as is.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_NO_PROGRESS=1
WORKDIR /src

# ---------------------------------------------------------------------------------------------
# builder (cpu): the serving install, `uv sync --frozen --no-dev --extra cpu` (no torch),
# against the image's own /usr/local/bin/python3.12, which the cpu target has at the same path.
FROM uv-base AS builder
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.12
# Dependencies first, from the lock alone: this layer is rebuilt only when the lock changes.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --extra cpu --no-install-project --no-editable
# Then the project (a wheel, not editable: the runtime image carries no source tree).
COPY . /src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra cpu --no-editable

# ---------------------------------------------------------------------------------------------
# builder-gpu: `uv sync --frozen --no-dev --extra gpu` (onnxruntime-gpu and the CUDA build of
# torch, CUDA 13 wheels), on a uv-managed CPython under /opt/python, which is copied into the
# CUDA image at the same path (that image has no Python 3.12 of its own to match).
FROM uv-base AS builder-gpu
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_PYTHON=3.12.12
RUN uv python install 3.12.12
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --extra gpu --no-install-project --no-editable
COPY . /src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra gpu --no-editable
# TensorRT 10, in its own step: it is not in uv.lock, because its PyPI packages are stubs that
# download from pypi.nvidia.com at install time. Pinned to the 10.x build for CUDA 13 (torch
# 2.13 and onnxruntime-gpu in the lock are CUDA 13 builds); service/backends/tensorrt.py is
# written for the TensorRT 10 API and refuses 11. --no-deps: the two wheels are the whole of
# TensorRT (the `tensorrt-cu13` meta-package only depends on them), and nothing here may move
# a locked package; the CUDA runtime they need comes from the base image and torch's wheels.
# A build argument, so a site can match the TensorRT that built its .plan files.
ARG TENSORRT_VERSION=10.16.1.11
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /app/.venv/bin/python --no-deps \
      --extra-index-url https://pypi.nvidia.com \
      "tensorrt-cu13-libs==${TENSORRT_VERSION}" "tensorrt-cu13-bindings==${TENSORRT_VERSION}"

# ---------------------------------------------------------------------------------------------
# gpu: CUDA 13 runtime with cuDNN 9 (what onnxruntime-gpu's CUDA execution provider loads).
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS gpu
ARG VERSION=0.10.0
ARG SOURCE_URL=""
ARG REVISION=""
LABEL org.opencontainers.image.title="sharpcxr" \
      org.opencontainers.image.description="Resolution-aware pneumothorax classifiers behind FastAPI (ONNX Runtime CUDA / TensorRT). Not for clinical use." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}"
RUN groupadd --system --gid 10001 sharpcxr \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/sharpcxr --create-home \
       --shell /usr/sbin/nologin sharpcxr \
    && mkdir -p /models /data \
    && chown sharpcxr:sharpcxr /data
COPY --from=builder-gpu /opt/python /opt/python
COPY --from=builder-gpu /app/.venv /app/.venv
# SHARPCXR_BACKEND=onnxruntime with SHARPCXR_DEVICE=cuda: ONNX Runtime asks for its TensorRT,
# then its CUDA execution provider, and runs the manifest's .onnx files, which every manifest
# has. SHARPCXR_BACKEND=tensorrt (the native TensorRT backend) needs .plan files built on this
# GPU model with this TensorRT version (`sharpcxr export --tensorrt on`), so it is opt-in.
# LD_LIBRARY_PATH: ONNX Runtime's TensorRT provider dlopens libnvinfer, which the TensorRT
# wheels keep in site-packages/tensorrt_libs; the other two entries are the CUDA base image's.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SHARPCXR_MODELS_DIR=/models \
    SHARPCXR_DATA_DIR=/data \
    SHARPCXR_DEVICE=cuda \
    SHARPCXR_BACKEND=onnxruntime \
    SHARPCXR_HOST=0.0.0.0 \
    SHARPCXR_PORT=8000 \
    LD_LIBRARY_PATH=/app/.venv/lib/python3.12/site-packages/tensorrt_libs:/usr/local/nvidia/lib:/usr/local/nvidia/lib64
USER 10001:10001
WORKDIR /data
EXPOSE 8000
# A longer start period than cpu: CUDA initialisation comes before the server answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# 0.0.0.0 (SHARPCXR_HOST above) is right only inside the container (see the cpu target).
ENTRYPOINT ["sharpcxr"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
# models (optional): `make models` inside Docker, for hosts without Python. It needs the train
# extra (torch: a multi-GB download) and about 14 minutes on 2 cores; the result is exported
# to the host, not kept in an image:
#   docker build --target models --output type=local,dest=models .
FROM uv-base AS models-build
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.12
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --extra cpu --extra train --no-install-project
COPY . /src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra cpu --extra train \
    && /app/.venv/bin/python -m training.demo --models-dir /out --summary /out/demo-summary.json

FROM scratch AS models
COPY --from=models-build /out /

# ---------------------------------------------------------------------------------------------
# cpu: the serving image. Last in the file, so a plain `docker build .` builds it.
FROM python:3.12.12-slim-bookworm AS cpu
ARG VERSION=0.10.0
ARG SOURCE_URL=""
ARG REVISION=""
LABEL org.opencontainers.image.title="sharpcxr" \
      org.opencontainers.image.description="Resolution-aware pneumothorax classifiers behind FastAPI (ONNX Runtime, CPU). Not for clinical use." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}"
# A fixed uid/gid, so that file ownership on mounted volumes is predictable and Kubernetes'
# runAsNonRoot can verify it. /data (the job store) belongs to it; /models is mounted read-only.
RUN groupadd --system --gid 10001 sharpcxr \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/sharpcxr --create-home \
       --shell /usr/sbin/nologin sharpcxr \
    && mkdir -p /models /data \
    && chown sharpcxr:sharpcxr /data
# The venv stays owned by root: the service cannot modify its own code.
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SHARPCXR_MODELS_DIR=/models \
    SHARPCXR_DATA_DIR=/data \
    SHARPCXR_HOST=0.0.0.0 \
    SHARPCXR_PORT=8000
USER 10001:10001
WORKDIR /data
EXPOSE 8000
# Liveness: /healthz. The port opens once the models are loaded and warmed (the service
# loads them before it listens), hence the start period. Python: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# SHARPCXR_HOST=0.0.0.0 (above) is right only inside the container: the container's network
# namespace is the boundary, and the host decides what to publish (docker-compose.yml
# publishes on 127.0.0.1). Outside a container sharpcxr binds 127.0.0.1 by default, and
# should. Host and port come from the environment, not flags, so that a ConfigMap or
# `docker run -e` can change them (flags would win over the environment).
ENTRYPOINT ["sharpcxr"]
CMD ["serve"]

