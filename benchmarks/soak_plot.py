"""The soak's figure (:mod:`benchmarks.soak`): RSS over time and latency per window."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(report: dict[str, Any], path: Path) -> None:
    """RSS (tree and server) over time and p95 per window, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, wins, v = report["samples"], report["windows"], report["verdict"]["checks"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    t = [s["t_s"] / 60 for s in samples]
    ax1.plot(t, [s["rss_mib"] for s in samples], label="RSS, server + children")
    ax1.plot(t, [s["rss_server_mib"] for s in samples], label="RSS, server process")
    ax1.plot(t, [s["pss_mib"] for s in samples], label="PSS, server + children", ls=":")
    ax1.axvline(report["settings"]["warmup_s"] / 60, color="grey", ls="--", lw=0.8)
    ax1.set_ylabel("MiB")
    g = v["rss_growth"]["value"]
    ax1.set_title(
        f"RSS growth {g:+.1%} (bound {v['rss_growth']['bound']:.0%}); "
        f"{report['settings']['rate_per_s']} req/s"
        if g is not None
        else "RSS"
    )
    ax1.legend(fontsize=8)
    mid = [(w["start_s"] + w["end_s"]) / 120 for w in wins]
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        ax2.plot(mid, [w[key] for w in wins], marker="o", label=label)
    for i in v["p95_drift"].get("contended_windows", []):  # left out of the p95 check
        ax2.axvspan(wins[i]["start_s"] / 60, wins[i]["end_s"] / 60, color="grey", alpha=0.15)
    base = v["p95_drift"]["baseline_ms"]
    if base:
        ax2.axhline(
            base * (1 + v["p95_drift"]["bound"]), color="red", ls="--", lw=0.8, label="p95 bound"
        )
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("latency ms (from due time)")
    ax2.set_xlabel("minutes")
    drift = v["p95_drift"]["value"]
    shown = "-" if drift is None else f"{drift:+.1%}"
    passed = "PASS" if report["verdict"]["ok"] else "FAIL"
    ax2.set_title(
        f"p95 drift {shown} (bound {v['p95_drift']['bound']:.0%}), unexpected "
        f"answers {v['unexpected']['value']}; verdict {passed}"
    )
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
