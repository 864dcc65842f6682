"""``sharpcxr triton-export`` / :mod:`sharpcxr.triton` against the real fixture models.

No Triton protobuf is installed, so the configs are read with a small parser of protobuf
text format below (the subset Triton configs use: messages, repeated fields in ``[...]``,
strings, numbers, enum identifiers, ``#`` comments); it refuses anything else, so a
syntax slip in the writer fails here rather than when tritonserver loads the repository.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from cxrmodel.manifest import ModelFileError, read_manifest, sha256_file
from cxrmodel.vocab import FileKind
from sharpcxr.cli import main
from sharpcxr.triton import export_triton_repository, preferred_batch_sizes

REPO = Path(__file__).resolve().parents[1]
Message = dict[str, list[Any]]

# --- a minimal protobuf text-format parser

TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"""
    r"""|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[{}\[\]:,])"""
)


def tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unexpected character {text[pos]!r} at {pos}")
        pos = m.end()
        if m.lastgroup:
            out.append((m.lastgroup, m.group(m.lastgroup)))
    return out


def parse_pbtxt(text: str) -> Message:
    """``{field: [values...]}``; a message value is a nested dict of the same shape."""
    toks, i = tokens(text), 0

    def peek() -> tuple[str, str] | None:
        return toks[i] if i < len(toks) else None

    def take(kind: str, value: str | None = None) -> str:
        nonlocal i
        tok = peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            raise ValueError(f"expected {value or kind} at token {i}, got {tok}")
        i += 1
        return tok[1]

    def scalar() -> Any:
        tok = peek()
        if tok is None:
            raise ValueError("unexpected end")
        kind, value = tok
        take(kind)
        if kind == "str":
            return json.loads(value)  # the writer's escapes are JSON's subset
        if kind == "num":
            return float(value) if re.search(r"[.eE]", value) else int(value)
        if kind == "id":
            return value  # an enum
        raise ValueError(f"expected a value, got {tok}")

    def value_or_message() -> Any:
        if peek() == ("punct", "{"):
            take("punct", "{")
            msg = fields("}")
            take("punct", "}")
            return msg
        return scalar()

    def fields(end: str | None) -> Message:
        msg: Message = {}
        while (tok := peek()) is not None and tok != ("punct", end):
            name = take("id")
            has_colon = peek() == ("punct", ":")
            if has_colon:
                take("punct", ":")
            elif peek() not in (("punct", "{"), ("punct", "[")):
                raise ValueError(f"field {name}: a scalar needs ':'")
            values = msg.setdefault(name, [])
            if peek() == ("punct", "["):
                take("punct", "[")
                while peek() != ("punct", "]"):
                    values.append(value_or_message())
                    if peek() == ("punct", ","):
                        take("punct", ",")
                take("punct", "]")
            else:
                values.append(value_or_message())
        if end is None and peek() is not None:
            raise ValueError(f"trailing tokens from {peek()}")
        return msg

    return fields(None)


def one(msg: Message, name: str) -> Any:
    values = msg[name]
    assert len(values) == 1, f"{name} appears {len(values)} times"
    return values[0]


def test_the_parser_reads_text_format_and_refuses_junk() -> None:
    msg = parse_pbtxt(
        '# c\nname: "a\\"b" n: 3 x: 1.5 k: KIND_GPU\nt [ { dims: [ 1, 2 ] }, { dims: [3] } ]\n'
        "m { inner: -4 } m: { inner: 5 }"
    )
    assert msg["name"] == ['a"b'] and msg["n"] == [3] and msg["x"] == [1.5]
    assert msg["k"] == ["KIND_GPU"] and [t["dims"] for t in msg["t"]] == [[1, 2], [3]]
    assert msg["m"] == [{"inner": [-4]}, {"inner": [5]}]
    for junk in ("name 3", "a: [1, 2", "a { b: 1", "a: 1 }", "a: 'x'", "a: 1;"):
        with pytest.raises(ValueError):
            parse_pbtxt(junk)


# --- the export


@pytest.fixture(scope="module")
def repo(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    written = export_triton_repository(models_dir, out)
    assert written == [out / "sharpcxr_128", out / "sharpcxr_256"]
    return out


def _session_io(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (
        {a.name: (a.type, a.shape) for a in session.get_inputs()},
        {a.name: (a.type, a.shape) for a in session.get_outputs()},
    )


@pytest.mark.parametrize("resolution", [128, 256])
def test_config_matches_the_graph_and_the_manifest(
    repo: Path, models_dir: Path, resolution: int
) -> None:
    entry = read_manifest(models_dir).by_resolution()[resolution]
    folder = repo / f"sharpcxr_{resolution}"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt"]
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert set(config) == {
        "name", "platform", "max_batch_size", "input", "output", "dynamic_batching",
        "instance_group",
    }  # fmt: skip
    assert one(config, "name") == folder.name  # Triton insists on the folder's name
    assert one(config, "platform") == "onnxruntime_onnx"
    assert one(config, "max_batch_size") == 8
    batching = one(config, "dynamic_batching")
    assert batching["preferred_batch_size"] == [2, 4, 8]
    assert one(batching, "max_queue_delay_microseconds") == 5000
    (group,) = config["instance_group"]
    assert one(group, "kind") == "KIND_CPU" and one(group, "count") == 1

    model = folder / "1" / "model.onnx"
    assert sha256_file(model) == entry.files[FileKind.ONNX].sha256
    assert model.read_bytes() == entry.path_of(FileKind.ONNX, models_dir).read_bytes()

    inputs, outputs = _session_io(model)
    for declared, real in ((config["input"], inputs), (config["output"], outputs)):
        assert sorted(one(t, "name") for t in declared) == sorted(real)
        for tensor in declared:
            ort_type, shape = real[one(tensor, "name")]
            assert one(tensor, "data_type") == "TYPE_FP32" and ort_type == "tensor(float)"
            assert not isinstance(shape[0], int)  # the batch is dynamic in the graph
            assert tensor["dims"] == shape[1:]  # and the config's dims are the rest
    assert config["input"][0]["dims"] == [1, resolution, resolution]
    assert {one(t, "name") for t in config["output"]} == {"logit", "cam", "embedding"}


def test_readme_says_how_to_serve_and_load(repo: Path) -> None:
    readme = (repo / "README.md").read_text()
    assert "tritonserver --model-repository" in readme
    assert "perf_analyzer -m sharpcxr_128" in readme and "--shape image:1,128,128" in readme
    assert "`sharpcxr_256`" in readme and "--gpus" not in readme


def test_gpu_instances_batch_size_and_link(models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    export_triton_repository(
        models_dir, out, max_batch_size=6, max_queue_delay_us=0, instance_count=2,
        kind="KIND_GPU", link=True,
    )  # fmt: skip
    config = parse_pbtxt((out / "sharpcxr_256" / "config.pbtxt").read_text())
    assert one(config, "max_batch_size") == 6
    assert one(config, "dynamic_batching")["preferred_batch_size"] == [2, 4, 6]
    assert one(one(config, "dynamic_batching"), "max_queue_delay_microseconds") == 0
    group = one(config, "instance_group")
    assert (one(group, "kind"), one(group, "count")) == ("KIND_GPU", 2)
    assert "--gpus all" in (out / "README.md").read_text()
    model = out / "sharpcxr_256" / "1" / "model.onnx"
    source = read_manifest(models_dir).by_resolution()[256].path_of(FileKind.ONNX, models_dir)
    assert model.stat().st_ino == source.stat().st_ino  # same file system here: a hard link


def test_preferred_batch_sizes() -> None:
    assert preferred_batch_sizes(1) == []
    assert preferred_batch_sizes(8) == [2, 4, 8]
    assert preferred_batch_sizes(12) == [2, 4, 8, 12]


def _copy_models(models_dir: Path, dest: Path) -> Path:
    shutil.copytree(models_dir, dest)
    return dest


def test_a_corrupt_model_is_refused_with_the_manifests_error(
    models_dir: Path, tmp_path: Path
) -> None:
    models = _copy_models(models_dir, tmp_path / "models")
    onnx = read_manifest(models).by_resolution()[256].path_of(FileKind.ONNX, models)
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    out = tmp_path / "repo"
    with pytest.raises(ModelFileError, match=r"does not match the manifest: sha256"):
        export_triton_repository(models, out)
    assert not out.exists()  # checked before anything was written, the 128 model included


def test_a_graph_that_breaks_the_manifests_interface_is_refused(
    models_dir: Path, tmp_path: Path
) -> None:
    models = _copy_models(models_dir, tmp_path / "models")
    path = models / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = next(m for m in manifest["models"] if m["resolution"] == 128)
    entry["outputs"]["embedding"] = [None, entry["outputs"]["embedding"][1] + 1]
    path.write_text(json.dumps(manifest))  # the sha256 still matches: only the graph can tell
    with pytest.raises(ModelFileError, match=r"breaks the manifest's interface: outputs"):
        export_triton_repository(models, tmp_path / "repo")


def test_an_existing_model_folder_needs_force(models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    export_triton_repository(models_dir, out)
    config = out / "sharpcxr_128" / "config.pbtxt"
    config.write_text("stale")
    with pytest.raises(FileExistsError, match="--force"):
        export_triton_repository(models_dir, out)
    assert config.read_text() == "stale"
    export_triton_repository(models_dir, out, force=True)
    assert one(parse_pbtxt(config.read_text()), "name") == "sharpcxr_128"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


# --- the CLI


def test_cli_writes_the_repository(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repo"
    argv = ["triton-export", "--models-dir", str(models_dir), "--out", str(out)]
    assert main([*argv, "--max-batch-size", "4", "--gpu"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "sharpcxr_128"), str(out / "sharpcxr_256")]
    config = parse_pbtxt((out / "sharpcxr_128" / "config.pbtxt").read_text())
    assert one(config, "max_batch_size") == 4
    assert one(one(config, "instance_group"), "kind") == "KIND_GPU"
    assert main(argv) == 1  # exists already
    err = capsys.readouterr().err
    assert err.startswith("sharpcxr triton-export: ") and "--force" in err
    assert main([*argv, "--force", "--max-batch-size", "0"]) == 1
    assert "max_batch_size must be >= 1" in capsys.readouterr().err


def test_the_export_imports_neither_torch_nor_onnx(models_dir: Path, tmp_path: Path) -> None:
    """The serving install has neither; the library does not touch the training code
    either (the CLI's parser does import ``training.cli``, torch-free, for its options)."""
    probe = """
import sys
from pathlib import Path
def bad(names): return sorted(m for m in sys.modules if m.split('.')[0] in names)
from sharpcxr.triton import export_triton_repository
export_triton_repository(Path(sys.argv[1]), Path(sys.argv[2]) / "lib")
print(bad(('torch', 'onnx', 'training')))
from sharpcxr.cli import main
code = main(['triton-export', '--models-dir', sys.argv[1], '--out', sys.argv[2] + '/cli'])
print(code, bad(('torch', 'onnx')))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe, str(models_dir), str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (lines[0], lines[-1]) == ("[]", "0 []"), done.stdout
