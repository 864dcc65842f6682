"""Audit every package pinned in uv.lock for known vulnerabilities; fail when data is missing.

Every registry package in ``uv.lock`` (every extra, group and platform: the CPU and GPU
flavours, the training stack, the dev group) is checked at its pinned version with
pip-audit (``-r`` of ``name==version`` lines, ``--no-deps --disable-pip``: nothing is
resolved or installed), against each vulnerability service in ``--services`` (default
``pypi`` then ``osv``). A package counts as *audited* when a service answered for its
pinned version. What pip-audit cannot audit here is handed to one more source that is
exact where it applies: PyPI's project JSON (``/pypi/<name>/json``) lists the
vulnerabilities of the project's *latest* release only, so it audits a package pinned at
that release and nothing else (its ``releases`` entries carry no vulnerabilities).

Plain ``pip-audit`` reports a package it could not look up as skipped and still prints
"No known vulnerabilities found" with exit 0; this script counts those instead:

- exit 0: every pinned package audited, no finding outside ``--exceptions``;
- exit 1: a known vulnerability not explained in ``--exceptions`` (or a malformed file);
- exit 2: ``could not be audited: N of M packages`` (with ``--allow-unaudited``: the same
  report, loudly, and exit 0 unless there is a finding).

``--exceptions`` (``deploy/audit-exceptions.txt``): one ``VULN-ID  reason`` per line, the
reason required; each ID is passed to pip-audit as ``--ignore-vuln``.

    python tools/audit_lock.py                 # make audit
    python tools/audit_lock.py --out audit.json --allow-unaudited
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROJECT_JSON = "https://pypi.org/pypi/{name}/json"


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def locked_packages(lock: Path) -> list[tuple[str, str]]:
    """``(name, version)`` of every registry package in the lock (not the project itself)."""
    data = tomllib.loads(lock.read_text())
    return sorted(
        (p["name"], p["version"])
        for p in data.get("package", [])
        if "registry" in p.get("source", {}) and "version" in p
    )


def read_exceptions(path: Path) -> dict[str, str]:
    """``{vuln_id: reason}``; ValueError for a line without a reason."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        vuln, _, reason = text.partition(" ")
        if not reason.strip():
            raise ValueError(f"{path}:{n}: {vuln} has no reason; write 'ID  why it is accepted'")
        out[vuln] = reason.strip()
    return out


def layers(packages: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Split so no name repeats within a layer (pip-audit refuses duplicate requirements,
    and the lock pins some packages at two versions, one per Python range)."""
    out: list[list[tuple[str, str]]] = []
    for name, version in packages:
        for layer in out:
            if all(n != name for n, _ in layer):
                layer.append((name, version))
                break
        else:
            out.append([(name, version)])
    return out


def pip_audit(
    packages: Sequence[tuple[str, str]], service: str, ignore: Sequence[str], timeout_s: int
) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], dict[tuple[str, str], str]]:
    """Audit ``packages`` with one service: ``(audited -> its vulns, unaudited -> why)``."""
    audited: dict[tuple[str, str], list[dict[str, Any]]] = {}
    missing: dict[tuple[str, str], str] = {}
    for layer in layers(packages):
        with tempfile.TemporaryDirectory() as tmp:
            req, out = Path(tmp) / "requirements.txt", Path(tmp) / "audit.json"
            req.write_text("".join(f"{n}=={v}\n" for n, v in layer))
            argv = [
                sys.executable,
                "-m",
                "pip_audit",
                "-r",
                str(req),
                "--no-deps",
                "--disable-pip",
                "-s",
                service,
                "-f",
                "json",
                "-o",
                str(out),
                "--progress-spinner",
                "off",
                "--timeout",
                str(timeout_s),
            ]
            for vuln in ignore:
                argv += ["--ignore-vuln", vuln]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
            if not out.is_file():  # the service did not answer at all (or pip-audit failed)
                last = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
                missing.update({p: f"{service}: {last}" for p in layer})
                continue
            report = json.loads(out.read_text())
        versions = dict(layer)
        for dep in report.get("dependencies", []):
            key = (dep["name"], dep.get("version") or versions.get(dep["name"], "?"))
            if "skip_reason" in dep:
                missing[key] = f"{service}: {dep['skip_reason']}"
            else:
                audited[key] = dep.get("vulns", [])
    return audited, missing


def latest_release_audit(
    name: str, version: str, ignore: Sequence[str], timeout_s: int
) -> tuple[list[dict[str, Any]] | None, str]:
    """PyPI's project JSON: the vulnerabilities when ``version`` is the latest release,
    else ``None`` and why it says nothing about ``version``."""
    request = urllib.request.Request(
        PROJECT_JSON.format(name=name), headers={"Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data = json.loads(response.read())
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
        return None, f"project JSON: {type(exc).__name__}: {str(exc)[:200]}"
    latest = data.get("info", {}).get("version")
    if latest != version:
        return None, f"project JSON describes only the latest release ({latest}), not {version}"
    vulns = []
    for v in data.get("vulnerabilities") or []:
        ids = [v.get("id"), *(v.get("aliases") or [])]
        if v.get("withdrawn") or any(i in ignore for i in ids):
            continue
        vulns.append(
            {
                "id": v.get("id"),
                "aliases": v.get("aliases") or [],
                "fix_versions": v.get("fixed_in") or [],
                "description": (v.get("summary") or v.get("details") or "")[:300],
            }
        )
    return vulns, "project JSON (pinned at the latest release)"


def audit(args: argparse.Namespace) -> dict[str, Any]:
    exceptions = read_exceptions(args.exceptions)
    ignore = sorted(exceptions)
    packages = locked_packages(args.lock)
    audited: dict[tuple[str, str], dict[str, Any]] = {}
    why: dict[tuple[str, str], list[str]] = {p: [] for p in packages}
    todo = list(packages)
    for service in args.services:
        if not todo:
            break
        say(f"audit: {len(todo)} packages through pip-audit -s {service} ...")
        found, missing = pip_audit(todo, service, ignore, args.timeout_s)
        for key, vulns in found.items():
            audited[key] = {"source": f"pip-audit {service}", "vulns": vulns}
        for key, reason in missing.items():
            why.setdefault(key, []).append(reason)
        todo = [p for p in todo if p not in audited]
    if todo and args.latest_json:
        say(f"audit: {len(todo)} packages left; PyPI project JSON (latest release only) ...")
        for name, version in list(todo):
            latest, source = latest_release_audit(name, version, ignore, args.timeout_s)
            if latest is None:
                why[(name, version)].append(source)
            else:
                audited[(name, version)] = {"source": source, "vulns": latest}
        todo = [p for p in todo if p not in audited]
    findings = [
        {"name": n, "version": v, **vuln}
        for (n, v), row in sorted(audited.items())
        for vuln in row["vulns"]
    ]
    sources: dict[str, int] = {}
    for row in audited.values():
        sources[row["source"]] = sources.get(row["source"], 0) + 1
    return {
        "lock": str(args.lock),
        "packages": len(packages),
        "audited": len(audited),
        "audited_by": sources,
        "unaudited": [{"name": n, "version": v, "why": why[(n, v)]} for n, v in todo],
        "findings": findings,
        "exceptions": exceptions,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--lock", type=Path, default=REPO / "uv.lock")
    p.add_argument("--exceptions", type=Path, default=REPO / "deploy/audit-exceptions.txt")
    p.add_argument("--services", type=lambda t: t.split(","), default=["pypi", "osv"])
    p.add_argument(
        "--no-latest-json",
        dest="latest_json",
        action="store_false",
        help="skip the PyPI project-JSON fallback",
    )
    p.add_argument("--timeout-s", type=int, default=20, help="per network request")
    p.add_argument(
        "--allow-unaudited",
        action="store_true",
        help="report unaudited packages loudly but exit 0 (findings still fail)",
    )
    p.add_argument("--out", type=Path, default=None, help="the full report as JSON")
    args = p.parse_args(argv)
    try:
        report = audit(args)
    except ValueError as exc:
        say(f"audit: FAILED: {exc}")
        return 1
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    say(
        f"audit: {report['audited']} of {report['packages']} locked packages audited "
        f"({', '.join(f'{k}: {n}' for k, n in report['audited_by'].items()) or 'none'}); "
        f"{len(report['exceptions'])} accepted in {args.exceptions.name}"
    )
    for f in report["findings"]:
        say(
            f"audit: FINDING {f['name']}=={f['version']} {f['id']} "
            f"(fixed in {', '.join(map(str, f.get('fix_versions') or [])) or '?'})"
        )
    unaudited = report["unaudited"]
    if unaudited:
        say(f"audit: could not be audited: {len(unaudited)} of {report['packages']} packages")
        for row in unaudited[:10]:
            say(f"audit:   {row['name']}=={row['version']}: {row['why'][-1]}")
        if len(unaudited) > 10:
            say(f"audit:   ... and {len(unaudited) - 10} more (--out for the list)")
    if report["findings"]:
        return 1
    if unaudited and not args.allow_unaudited:
        say("audit: FAILED: no vulnerability data for the packages above (see README)")
        return 2
    if unaudited:
        say("audit: WARNING: passing with unaudited packages (--allow-unaudited)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
