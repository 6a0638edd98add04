"""The line-count budget (after tinygrad's sz.py): lines of code per package of edgecompile/, and a
check that no module passes MAX_FILE_LINES nor the package MAX_TOTAL_LINES.

``python scripts/sz.py`` prints the table and exits 1 naming what is over; scripts/test.sh runs it
beside ruff. STYLE.md: split a module by concept before it passes ~500 lines.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: No module above this many lines (blank lines and comments count: they are read too).
MAX_FILE_LINES = 600
#: The whole package; raise it in the same commit as the code that needs it, saying why.
MAX_TOTAL_LINES = 26_000


def line_counts(package: Path) -> dict[Path, int]:
    """Lines of every ``.py`` file under `package`, keyed by path relative to the repository."""
    return {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in sorted(package.rglob("*.py"))}


def main() -> int:
    counts = line_counts(ROOT / "edgecompile")
    by_dir: dict[str, list[int]] = defaultdict(list)
    for path, n in counts.items():
        by_dir[str(path.parent)].append(n)
    print(f"{'package':<34} {'files':>5} {'lines':>7} {'largest':>8}")
    for d, ns in sorted(by_dir.items()):
        print(f"{d:<34} {len(ns):>5} {sum(ns):>7} {max(ns):>8}")
    total = sum(counts.values())
    print(f"{'total':<34} {len(counts):>5} {total:>7}   (budget {MAX_TOTAL_LINES}, {MAX_FILE_LINES} a file)")
    over = [f"{p}: {n} lines > {MAX_FILE_LINES}" for p, n in counts.items() if n > MAX_FILE_LINES]
    if total > MAX_TOTAL_LINES:
        over.append(f"edgecompile/: {total} lines > {MAX_TOTAL_LINES}")
    for line in over:
        print("over budget:", line, file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
