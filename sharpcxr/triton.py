"""Export the manifest's ONNX models as a Triton Inference Server model repository.

One Triton model per resolution, ``<out>/sharpcxr_<R>/``, with ``config.pbtxt`` (platform
``onnxruntime_onnx``, the ONNX contract of :mod:`cxrmodel.interface` without the batch
dimension, dynamic batching, one instance group) and ``1/model.onnx``, a byte-identical
copy (or hard link) of the manifest's file. ``<out>/README.md`` says how to serve it with
``tritonserver`` and load it with ``perf_analyzer``.

Triton serves the *graph* only: the input is the preprocessed ``[N, 1, R, R]`` float32
tensor, and the outputs are the raw ``logit`` / ``cam`` / ``embedding``. DICOM decoding,
letterboxing and normalisation, temperature calibration, the threshold and the OOD score
stay in the sharpcxr service, so a perf_analyzer number is comparable with the sweep's
``timings_ms.inference``, not with its end-to-end latency.

Before writing anything, every model file is checked as the service checks it (the
manifest's sha256, :meth:`ManifestEntry.verified_path`) and its real inputs and outputs
(an ONNX Runtime session on the file) against the manifest's contract; a mismatch is a
:class:`ModelFileError`, because a config that disagrees with its graph only fails when
Triton loads it. Imports neither torch nor onnx (the serving install has neither).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cxrmodel.interface import CAM, EMBEDDING, LOGIT
from cxrmodel.manifest import ManifestEntry, ModelFileError, read_manifest, sha256_file
from cxrmodel.vocab import FileKind

log = logging.getLogger(__name__)

Kind = Literal["KIND_CPU", "KIND_GPU"]
#: the service's own defaults (service/settings.py: max_batch_size 8, batch_timeout_ms 5),
#: so a Triton run and a sweep batch alike unless told otherwise
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_QUEUE_DELAY_US = 5_000
#: ONNX Runtime's element type names -> Triton's; the contract is float32 only, the others
#: are here so a mismatch message names the type instead of a KeyError
ORT_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL",
}
MANIFEST_TO_TRITON = {"float32": "TYPE_FP32"}


def model_name(resolution: int) -> str:
    """The Triton model (and folder) name of one resolution."""
    return f"sharpcxr_{resolution}"


@dataclass(frozen=True)
class Tensor:
    """One config ``input`` / ``output``: dims exclude the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def contract_of(entry: ManifestEntry) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) as the manifest entry declares them, batch dimension dropped."""
    dtype = MANIFEST_TO_TRITON[entry.input.dtype]
    outputs = {LOGIT: entry.outputs.logit, CAM: entry.outputs.cam}
    if entry.outputs.embedding is not None:
        outputs[EMBEDDING] = entry.outputs.embedding

    def tensor(name: str, shape: Sequence[int | None]) -> Tensor:
        if not shape or shape[0] is not None or any(d is None for d in shape[1:]):
            raise ModelFileError(
                f"model {entry.label}: {name} shape {list(shape)} in the manifest is not "
                "[batch, fixed dims...]; Triton's dynamic batching needs exactly that"
            )
        return Tensor(name, dtype, tuple(int(d) for d in shape[1:] if d is not None))

    declared_outputs = [tensor(n, s) for n, s in outputs.items()]
    return [tensor(entry.input.name, entry.input.shape)], declared_outputs


def _session_tensors(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of the ONNX file as ONNX Runtime reads it; a symbolic or unknown
    first dimension is the batch, a fixed one is kept (it is then a mismatch)."""
    import onnxruntime as ort  # lazily: --help and the tests' collection stay cheap

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are not ours
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelFileError(f"model file {path} is not a loadable ONNX graph: {exc}") from None

    def tensors(args: Sequence[Any]) -> list[Tensor]:
        out = []
        for arg in args:
            shape = list(arg.shape)
            batch_is_dynamic = bool(shape) and not isinstance(shape[0], int)
            rest = shape[1:] if batch_is_dynamic else [-2, *shape]  # -2: no dynamic batch
            dims = tuple(d if isinstance(d, int) else -1 for d in rest)
            out.append(Tensor(arg.name, ORT_TO_TRITON.get(arg.type, str(arg.type)), dims))
        return out

    return tensors(session.get_inputs()), tensors(session.get_outputs())


def check_contract(entry: ManifestEntry, path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The entry's contract, after checking it against the real graph at ``path``."""
    declared = contract_of(entry)
    actual = _session_tensors(path)
    for what, want, got in zip(("inputs", "outputs"), declared, actual, strict=True):
        if sorted(want, key=lambda t: t.name) != sorted(got, key=lambda t: t.name):
            raise ModelFileError(
                f"model file {path} (model {entry.label}) breaks the manifest's interface: "
                f"{what} {_show(got)} in the graph, {_show(want)} in the manifest (dims "
                "without the batch; -2 first: the graph has no dynamic batch); re-export it"
            )
    return declared


def _show(tensors: Sequence[Tensor]) -> str:
    return "[" + ", ".join(f"{t.name}:{t.data_type}{list(t.dims)}" for t in tensors) + "]"


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 2 up to ``max_batch_size``, and ``max_batch_size`` itself:
    the batcher prefers full batches of a size the runtime has seen, not just any size."""
    sizes = [s for s in (2**i for i in range(1, 16)) if s <= max_batch_size]
    if max_batch_size > 1 and max_batch_size not in sizes:
        sizes.append(max_batch_size)
    return sizes


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_config(
    entry: ManifestEntry,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    *,
    max_batch_size: int,
    max_queue_delay_us: int,
    instance_count: int,
    kind: Kind,
) -> str:
    """``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``)."""

    def tensor_block(tensors: Sequence[Tensor]) -> str:
        items = [
            f"  {{\n    name: {_quote(t.name)}\n    data_type: {t.data_type}\n"
            f"    dims: [ {', '.join(str(d) for d in t.dims)} ]\n  }}"
            for t in tensors
        ]
        return "[\n" + ",\n".join(items) + "\n]"

    norm = entry.input.normalisation
    temperature = entry.calibration.temperature if entry.calibration else None
    # Provenance as comments: free text in `parameters` would be handed to the ONNX
    # Runtime backend, which reads some keys there as its own options.
    lines = [
        f"# {entry.label}, version {entry.version}, architecture {entry.architecture.value}, "
        f"downsample {entry.downsample.value}",
        f"# source: {entry.files[FileKind.ONNX].path} sha256 {entry.files[FileKind.ONNX].sha256}",
        f"# input: letterboxed {entry.resolution} px, (x - {norm.get('mean')}) / "
        f"{norm.get('std')} (see the manifest's input.normalisation)",
        f"# outputs are raw: p = sigmoid(logit / {temperature}); positive when p >= "
        f"{entry.threshold} (calibration and threshold live in the sharpcxr service)",
        "# written by `sharpcxr triton-export`",
        f"name: {_quote(model_name(entry.resolution))}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        f"input {tensor_block(inputs)}",
        f"output {tensor_block(outputs)}",
        "dynamic_batching {",
    ]
    if sizes := preferred_batch_sizes(max_batch_size):
        lines.append(f"  preferred_batch_size: [ {', '.join(str(s) for s in sizes)} ]")
    lines += [
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {instance_count}",
        f"    kind: {kind}",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


def _place(source: Path, target: Path, *, link: bool, sha256: str) -> None:
    """``target`` = ``source``'s bytes: a hard link when asked and possible, else a copy;
    the copy is hashed again, so a short write cannot pass for the model."""
    if link:
        try:
            os.link(source, target)
            return
        except OSError as exc:  # another file system, or links not allowed: copy instead
            log.info("hard link %s -> %s failed (%s); copying", source, target, exc)
    shutil.copyfile(source, target)
    if (actual := sha256_file(target)) != sha256:
        raise ModelFileError(f"copy {target} of {source} has sha256 {actual} != {sha256}")


def repository_readme(names: Sequence[tuple[str, ManifestEntry]], kind: Kind) -> str:
    gpus = " --gpus all" if kind == "KIND_GPU" else ""
    first_name, first = names[0]
    r = first.resolution
    models = "\n".join(
        f"| `{n}` | {e.resolution} | `{e.name}` {e.version} | `{e.input.name}` "
        f"`[N, 1, {e.resolution}, {e.resolution}]` |"
        for n, e in names
    )
    return f"""# sharpcxr Triton model repository

Written by `sharpcxr triton-export` from the models folder's `manifest.json`; each
`1/model.onnx` is byte-identical to the manifest's file (sha256 in each `config.pbtxt`).

| Triton model | resolution | sharpcxr model | input |
|---|---:|---|---|
{models}

Triton runs the graph only: send the *preprocessed* float32 tensor (`[N, 1, R, R]`,
letterboxed and normalised as the manifest's `input.normalisation` says); the outputs are
the raw `logit`, `cam` and `embedding`. Decoding, calibration, the threshold and the OOD
score are the sharpcxr service's, so compare perf_analyzer with the sweep's
`timings_ms.inference`, not with its end-to-end latency.

## Serve it

```bash
docker run --rm{gpus} -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
    -v "$PWD":/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
    tritonserver --model-repository=/models
curl -s localhost:8000/v2/models/{first_name}/config   # the loaded config
```

(run it from this folder; `<yy.mm>` is a Triton release, e.g. one whose ONNX Runtime
supports the graph's opset.) Metrics are on port 8002 (`/metrics`).

## Load it

From the SDK image (`nvcr.io/nvidia/tritonserver:<yy.mm>-py3-sdk`, host network):

```bash
perf_analyzer -m {first_name} -u localhost:8001 -i grpc \\
    --shape {first.input.name}:1,{r},{r} --concurrency-range 1:8:1 \\
    --measurement-interval 5000 -f {first_name}.csv
```

The input is called `{first.input.name}` (the sharpcxr ONNX contract), so `--shape`
names it; the dims exclude the batch, which perf_analyzer sets with `-b` (default 1) while
the dynamic batcher groups concurrent requests up to `max_batch_size`. perf_analyzer
sends random data by default, which is fine for timing a fixed-size graph.
"""


def export_triton_repository(
    models_dir: Path,
    out_dir: Path,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    instance_count: int = 1,
    kind: Kind = "KIND_CPU",
    link: bool = False,
    force: bool = False,
) -> list[Path]:
    """Write one Triton model per manifest resolution under ``out_dir``; returns the
    model folders, by resolution.

    Every model is verified (sha256, then its graph against the contract) before anything
    is written, so a bad model leaves ``out_dir`` as it was. A model folder that exists is
    refused (``FileExistsError``) unless ``force``, which replaces just that folder.
    ``ModelFileError`` for a missing, changed or non-conforming model; ``ValueError`` for
    bad settings or an empty manifest.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1 (the graphs batch), got {max_batch_size}")
    if max_queue_delay_us < 0 or instance_count < 1:
        raise ValueError("max_queue_delay_us >= 0 and instance_count >= 1 please")
    if kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"kind must be KIND_CPU or KIND_GPU, got {kind!r}")
    models_dir, out_dir = Path(models_dir), Path(out_dir)
    entries = sorted(read_manifest(models_dir).by_resolution().values(), key=lambda e: e.resolution)
    if not entries:
        raise ValueError(f"the manifest in {models_dir} lists no models")

    planned = []
    for entry in entries:
        source = entry.verified_path(FileKind.ONNX, models_dir, why="the Triton export")
        inputs, outputs = check_contract(entry, source)
        config = render_config(
            entry, inputs, outputs, max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us, instance_count=instance_count, kind=kind,
        )  # fmt: skip
        target = out_dir / model_name(entry.resolution)
        if target.exists() and not force:
            raise FileExistsError(f"{target} exists; pass --force to replace it")
        planned.append((entry, source, config, target))

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for entry, source, config, target in planned:
        # build next to the target, then swap it in: no half-written model folder is ever
        # visible to a Triton that polls the repository
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=out_dir))
        try:
            (staging / "1").mkdir()
            _place(source, staging / "1" / "model.onnx", link=link,
                   sha256=entry.files[FileKind.ONNX].sha256)  # fmt: skip
            (staging / "config.pbtxt").write_text(config, encoding="utf-8")
            staging.chmod(0o755)  # mkdtemp makes 0700; Triton may run as another user
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("wrote %s (%s, %s)", target, entry.label, kind)
        written.append(target)
    names = [(model_name(e.resolution), e) for e, *_ in planned]
    (out_dir / "README.md").write_text(repository_readme(names, kind), encoding="utf-8")
    return written
