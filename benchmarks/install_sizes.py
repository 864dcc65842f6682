"""What each install costs on disk: the serving install, the GPU serving install, the full one.

Each flavour is synced from ``uv.lock`` (``--frozen``) into a fresh virtual environment in
a temporary directory and measured as the apparent size of every file in it (links from
uv's cache counted once per file, as a container layer would store them).

    uv run python -m benchmarks.install_sizes --out benchmarks/results/install_sizes.json

The gpu flavour downloads onnxruntime-gpu (~300 MB) the first time; ``--flavours`` picks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAVOURS: dict[str, tuple[str, ...]] = {
    "serving (cpu)": ("--no-dev", "--extra", "cpu"),
    "serving (gpu)": ("--no-dev", "--extra", "gpu"),
    "full (make install)": ("--extra", "cpu", "--extra", "train"),
}


def _uv() -> list[str]:
    if os.environ.get("UV"):
        return [os.environ["UV"]]
    return ["uv"] if shutil.which("uv") else [sys.executable, "-m", "uv"]


def tree_bytes(root: Path) -> int:
    """Apparent size of the regular files under ``root``, each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        st = path.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def measure(args: tuple[str, ...]) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="sharpcxr-size-") as tmp:
        venv = Path(tmp) / "venv"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
        env["UV_PROJECT_ENVIRONMENT"] = str(venv)
        start = time.perf_counter()
        subprocess.run([*_uv(), "sync", "--frozen", "--quiet", *args], cwd=REPO, env=env,
                       check=True, timeout=3600)  # fmt: skip
        seconds = time.perf_counter() - start
        listing = subprocess.run(
            [str(venv / "bin" / "python"), "-c",
             "import importlib.metadata as m; print(len(list(m.distributions())))"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        has_torch = (
            subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"],
                           capture_output=True).returncode == 0
        )  # fmt: skip
        return {
            "uv_sync_args": " ".join(args),
            "bytes": tree_bytes(venv),
            "distributions": int(listing.stdout.strip()),
            "torch_importable": has_torch,
            "sync_seconds_from_cache": round(seconds, 1),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/install_sizes.json")
    parser.add_argument("--flavours", default=",".join(FLAVOURS), help="comma-separated names")
    args = parser.parse_args(argv)
    chosen = [f.strip() for f in args.flavours.split(",") if f.strip()]
    rows = {name: measure(FLAVOURS[name]) for name in chosen}
    report = {
        "measured_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()}, Python {platform.python_version()}",
        "flavours": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| install | `uv sync --frozen` args | size | distributions | torch |",
             "|---|---|---:|---:|---|"]  # fmt: skip
    for name, row in rows.items():
        size = f"{int(row['bytes']) / 1e9:.2f} GB"  # type: ignore[call-overload]
        lines.append(f"| {name} | `{row['uv_sync_args']}` | {size} | {row['distributions']} "
                     f"| {'yes' if row['torch_importable'] else 'no'} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(
        f"# Install sizes ({report['measured_utc']}, {report['machine']})\n\n"
        "`uv run python -m benchmarks.install_sizes`\n\n" + table
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
