"""Report of benchmarks/speed.py: results JSON, log-log plot and a Markdown table."""

from __future__ import annotations

import json
import typing as tp
from pathlib import Path

import numpy as np

from _speed_profile import profile_table

COLUMNS = (
    ("invcalc", "invcalc"),
    ("torchani", "torchani ASE"),
    ("torchani_adaptive", "torchani ASE, cell list"),
    ("gfn2_xtb", "GFN2-xTB (tblite)"),
)


def scaling_exponent(systems: dict[str, tp.Any], lo: int = 1000) -> tuple[float, list[int]]:
    """b of t = a N^b, least squares in log-log over invcalc's water boxes >= lo atoms."""
    pts = [
        (s["atoms"], s["invcalc"]["median_ms"])
        for name, s in systems.items()
        if name.startswith("water") and s["atoms"] >= lo and s["invcalc"]["median_ms"]
    ]
    if len(pts) < 2:
        return float("nan"), [p[0] for p in pts]
    n, t = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(n, t, 1)[0]), [p[0] for p in pts]


def _fmt(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.3g} ms"


def _load_note(meta: dict[str, tp.Any]) -> str:
    """Whether other jobs shared the CPU, from the 1-minute load averages (which count
    this benchmark's own busy thread(s) too)."""
    start, end = meta["load_average_start"][0], meta["load_average_end"][0]
    loads = f"load average {start:.1f} at the start, {end:.1f} at the end"
    if max(start, end) > meta["threads"] + 0.5:
        return (f"The machine was shared with other jobs ({loads}; {meta['cpu_count']} cores), "
                "so absolute times are inflated; the calculators ran interleaved, so the "
                "ratios are fair.")
    return (f"No other jobs ran ({loads}, this benchmark's own thread(s) included); the "
            "calculators ran interleaved.")


def table(results: dict[str, tp.Any]) -> str:
    """Markdown table: median energy+forces time per call, and ratios to invcalc."""
    lines = [
        "| system | atoms | " + " | ".join(label for _, label in COLUMNS)
        + " | torchani / invcalc | xTB / invcalc | invcalc first call | peak RSS | peak GPU |",
        "|---|---:|" + "---:|" * (len(COLUMNS) + 5),
    ]
    for name, s in results["systems"].items():
        mine = s["invcalc"]["median_ms"]
        cells = [_fmt(s.get(key, {}).get("median_ms")) for key, _ in COLUMNS]
        ratios = []
        for key in ("torchani", "gfn2_xtb"):
            other = s.get(key, {}).get("median_ms")
            ratios.append(f"{other / mine:.1f}x" if other and mine else "—")
        lines.append(
            f"| {name} | {s['atoms']} | " + " | ".join(cells) + f" | {ratios[0]} | "
            f"{ratios[1]} | {_fmt(s['invcalc']['first_call_ms'])} | "
            f"{s['peak_rss_mb'] / 1024:.1f} GB | {_gb(s.get('peak_gpu_mb'))} |"
        )
    return "\n".join(lines)


def _gb(mb: float | None) -> str:
    return "—" if mb is None else f"{mb / 1024:.2f} GB"


def throughput_table(results: dict[str, tp.Any]) -> str:
    """Markdown table of MD atom-steps per second, 8-member ensemble and single member."""
    lines = [
        "| MD throughput (velocity Verlet) | atoms | ensemble of 8: atom-steps/s | peak GPU "
        "| single member: atom-steps/s | peak GPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.get("md_throughput", {}).items():
        e, s = row["ensemble_8"], row["single"]
        lines.append(
            f"| {name} | {row['atoms']} | {e['atom_steps_per_s']:.3g} | {_gb(e['peak_gpu_mb'])} "
            f"| {s['atom_steps_per_s']:.3g} | {_gb(s['peak_gpu_mb'])} |"
        )
    return "\n".join(lines)


def md_table(results: dict[str, tp.Any]) -> str:
    lines = [
        "| MD (velocity Verlet) | invcalc | torchani ASE | GFN2-xTB |", "|---|---:|---:|---:|"
    ]
    for name, rates in results["md"].items():
        keys = ("invcalc", "torchani", "gfn2_xtb")
        cells = [f"{rates[k]:.1f}" if k in rates else "—" for k in keys]
        lines.append(f"| {name} (steps/s) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, tp.Any], path: Path, exponent: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {"invcalc": "o-", "torchani": "s--", "torchani_adaptive": "^--", "gfn2_xtb": "d:"}
    for key, label in COLUMNS:
        pts = sorted(
            (s["atoms"], s[key]["median_ms"] / 1000)
            for s in results["systems"].values()
            if s.get(key, {}).get("median_ms")
        )
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, styles[key], label=label)
    first = sorted(
        (s["atoms"], s["invcalc"]["first_call_ms"] / 1000) for s in results["systems"].values()
    )
    x, y = zip(*first)
    ax.plot(x, y, "o:", color="C0", alpha=0.5, label="invcalc, first call (pair search)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms")
    ax.set_ylabel("energy + forces per call (s)")
    meta = results["meta"]
    ax.set_title(
        f"ANI-1x architecture, 8 members, {meta.get('device', 'cpu')}, {meta['threads']} "
        "CPU thread(s); "
        f"invcalc ~ N^{exponent:.2f}", fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict[str, tp.Any], out: Path, stem: str = "speed") -> None:
    """Write ``stem``.json, .png and .md into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    exponent, sizes = scaling_exponent(results["systems"])
    results["scaling"] = {"exponent": exponent, "fitted_atoms": sizes}
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    plot(results, out / f"{stem}.png", exponent)
    meta = results["meta"]
    b = results.get("batch", {})
    text = [
        "# Speed: invcalc vs torchani vs GFN2-xTB",
        "",
        f"Device: {meta.get('device', 'cpu')} for invcalc and torchani.  "
        f"CPU: {meta['cpu_count']} cores ({meta['cpu']}), **{meta['threads']} thread(s)** for "
        f"torch, MKL, OpenBLAS and tblite; torch {meta['torch']}; {meta['model']}; Verlet skin "
        f"{meta['skin_angstrom']} Å.  {_load_note(meta)}",
        "",
        "Median wall time of one energy + forces call (after a 0.005 Å random displacement, "
        "as in MD; the first call of a structure, with its neighbor search, is listed "
        "apart -- the very first one, ethanol's, also stacks the ensemble's weights):",
        "",
        table(results),
        "",
        md_table(results),
        "",
        throughput_table(results),
        "",
        f"Scaling: invcalc time ~ N^{exponent:.2f} over {sizes} atoms.",
        "",
    ]
    if "profile" in results:
        eth = results["systems"].get("ethanol", {})
        torchani_ms = eth.get("torchani", {}).get("median_ms")
        reference = {
            "torchani ASE call / 10 (the issue's 10x target)": torchani_ms and torchani_ms / 10,
            "GFN2-xTB (tblite) call": eth.get("gfn2_xtb", {}).get("median_ms"),
        }
        text += [
            "Where invcalc's ethanol call goes (each stage timed alone, median; "
            "`_speed_profile.py`):",
            "",
            profile_table(results["profile"], reference),
            "",
        ]
    if b:
        text += [
            f"Conformer screening, {b['structures']} conformers of a {b['atoms_each']}-atom "
            f"molecule: `calculate_batch` {b['invcalc_batch_s']:.2f} s, a loop of invcalc calls "
            f"{b['invcalc_loop_s']:.2f} s, a loop of torchani calls "
            f"~{b['torchani_loop_s_estimated_from_40']:.1f} s (timed on 40, scaled).",
            "",
        ]
    (out / f"{stem}.md").write_text("\n".join(text))
    print("\n".join(text))
