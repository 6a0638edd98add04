"""`ship`: copies what runs a bundle on a board into its ``python/`` folder, whole.

The copy is ``python/edgecompile/`` holding the package's ``__init__.py`` (the version),
``errors.py`` (the error kinds, pure Python), ``container/`` and ``bundle/``: every module of
those two packages, so nothing is listed by hand and a new module ships without a change here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: The subpackages and modules of edgecompile a bundle's ``python/`` holds (none imports torch).
SHIPPED = ("__init__.py", "errors.py", "container", "bundle")


def ship(python_dir: Path) -> Path:
    """Writes ``python_dir/edgecompile/`` (see the module docstring); returns that folder."""
    pkg = Path(__file__).resolve().parents[1]
    dst = Path(python_dir) / "edgecompile"
    dst.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        src = pkg / name
        # file by file, not shutil.copytree: its shutil.Error gathers the OSErrors into strings,
        # and the build must see the errno (a full disk or file-size limit is bad input, exit 3)
        files = [f for f in sorted(src.rglob("*.py")) if "__pycache__" not in f.parts] if src.is_dir() else [src]
        for f in files:
            out = dst / f.relative_to(pkg)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)
    return dst
