"""The label-efficiency study's figures in docs/figures/, drawn from docs/results/label-study.json.

    PYTHONPATH=src python benchmarks/figure_label_study.py

label-study.png: every line of rounds 1 and 2 (rows without a "round") but the superseded
gan-equi-cos. label-study-round6.png: round 6's preset line (gan-sensor) against supervised-few
and supervised-cos: their 5 % and 10 % points from round 5, their 1 % points from round 6.
"""
from __future__ import annotations

import json
from pathlib import Path

from handgan.study import plot_study

ROWS = Path("docs/results/label-study.json")
FIG = Path("docs/figures")


def main() -> None:
    rows = json.loads(ROWS.read_text())["rows"]
    early = [r for r in rows if r.get("round") is None and r["mode"] != "gan-equi-cos"]
    plot_study({"rows": early}, FIG / "label-study.png")
    baselines = ("supervised-few", "supervised-cos")
    round6 = [r for r in rows if (r.get("round") == 6 and r["mode"] == "gan-sensor")
              or (r.get("round") == 6 and r["mode"] in baselines and r["fraction"] == 0.01)
              or (r.get("round") == 5 and r["mode"] in baselines and r["fraction"] != 0.01)]
    plot_study({"rows": round6}, FIG / "label-study-round6.png")
    print(f"wrote {FIG / 'label-study.png'} ({len(early)} runs), "
          f"{FIG / 'label-study-round6.png'} ({len(round6)} runs)")


if __name__ == "__main__":
    main()
