"""Print one table of every bench/results/<bench>.json (written by the bench/*.py scripts).

Each result file: {"metrics": {name: {"value", "goal", "higher_is_better"}}, "machine", "commit"}.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    files = sorted(RESULTS.glob("*.json"))
    if not files:
        print(f"no results in {RESULTS}: run `make bench` (or a bench/*.py script) first")
        return
    print(f"{'bench':<12} {'metric':<34} {'value':>10} {'goal':>8}  met   commit")
    for f in files:
        r = json.loads(f.read_text())
        for name, m in r.get("metrics", {}).items():
            value, goal = m.get("value"), m.get("goal")
            higher = m.get("higher_is_better", True)
            met = (
                "-"
                if goal is None or value is None
                else ("yes" if (value >= goal if higher else value <= goal) else "NO")
            )
            fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
            print(
                f"{f.stem:<12} {name:<34} {fmt(value):>10} {fmt(goal):>8}  {met:<5} {str(r.get('commit', ''))[:8]}"
            )


if __name__ == "__main__":
    main()
