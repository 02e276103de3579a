"""Refresh the measured parts of a model card from the runs that measured them.

A card (``invcalc/models/default.json``) has hand-written parts (name, what the data
are, the commands, known limits) and measured parts. This script replaces only the
measured parts, so no number in the card is typed by hand:

- ``training`` and the counts in ``data``: from the metrics JSON ``invcalc train`` writes;
- ``held_out``: from one or more ``benchmarks/default_model.py --out`` reports, merged
  key by key (a key comes from the first report that has it: run the full held-out
  report first, then e.g. an MD-only run on a subset for ``md_stability``);
- ``reference_checks``: from the ``--card`` output of ``benchmarks/default_model.py``.

    python benchmarks/model_card.py invcalc/models/default.json --metrics model.metrics.json \\
        --report heldout.json --report md.json --reference-checks card.json
"""

from __future__ import annotations

import argparse
import json

#: Keys of the training metrics JSON copied into the card's ``training`` section.
TRAINING_KEYS = ("kept_epoch", "best_epoch", "epochs_run", "validation", "train",
                 "self_energies_eV", "history", "command")


def merge_reports(reports: list[dict]) -> tuple[dict, dict[str, int]]:
    """Key-by-key union of reports; the first report holding a key wins.

    Returns:
        The merged report and, per key, the index of the report it came from.
    """
    merged: dict = {}
    source: dict[str, int] = {}
    for i, report in enumerate(reports):
        for key, value in report.items():
            if key not in merged:
                merged[key] = value
                source[key] = i
    return merged, source


def refresh_card(card: dict, metrics: dict | None, reports: list[dict],
                 reference_checks: list[dict] | None) -> dict:
    """A copy of ``card`` with its measured sections replaced (None/empty: kept as is)."""
    card = dict(card)
    if metrics is not None:
        card["training"] = {k: metrics[k] for k in TRAINING_KEYS if k in metrics}
        d = metrics["data"]
        card["data"] = {**card.get("data", {}), "structures": d["num_structures"],
                        "left_out_max_force": d.get("num_left_out_max_force", 0),
                        "train": d["num_train"], "validation": d["num_validation"],
                        "sha256": d["sha256"]}
        card["data"].pop("left_out_max_force_15_eV_per_A", None)  # v0.2's name for the same count
        card["elements"] = d["elements"]
    if reports:
        card["held_out"], _ = merge_reports(reports)
    if reference_checks is not None:
        card["reference_checks"] = reference_checks
    return card


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("card", help="model card JSON, rewritten in place")
    p.add_argument("--metrics", help="metrics JSON written by invcalc train")
    p.add_argument("--report", action="append", default=[],
                   help="benchmarks/default_model.py --out JSON (repeatable; first wins per key)")
    p.add_argument("--reference-checks", help="benchmarks/default_model.py --card JSON")
    args = p.parse_args(argv)

    def load(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    card = load(args.card)
    reports = [load(r) for r in args.report]
    refs = load(args.reference_checks)["reference_checks"] if args.reference_checks else None
    new = refresh_card(card, load(args.metrics) if args.metrics else None, reports, refs)
    with open(args.card, "w", encoding="utf-8") as fh:
        json.dump(new, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    _, source = merge_reports(reports)
    for key, i in source.items():
        print(f"held_out.{key}: {args.report[i]}")
    print(f"wrote {args.card}")


if __name__ == "__main__":
    main()
