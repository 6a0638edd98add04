"""Where the project's data folders are: ``targets/`` and ``runtime/``.

In a source checkout (the README's editable install) they sit beside the package. A wheel carries
them as data files under ``<prefix>/share/edgecompile/`` (``[tool.setuptools.data-files]`` in
pyproject.toml), because the repository layout keeps them at the top level, outside the package.
"""
from __future__ import annotations

import sys
from pathlib import Path


def candidates(name: str) -> list[Path]:
    """Folders that may hold ``name``: the checkout's, the installed wheel's (found through its
    RECORD, so ``--prefix``/``--user`` installs work too), then ``sys.prefix``'s."""
    found = [Path(__file__).resolve().parent.parent / name]
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("edgecompile")
        key = f"share/edgecompile/{name}/"
        for f in dist.files or ():
            path = str(f).replace("\\", "/")
            if key in path:
                found.append(Path(dist.locate_file(path[: path.index(key) + len(key)])).resolve())
                break
    except PackageNotFoundError:
        pass
    found.append(Path(sys.prefix) / "share" / "edgecompile" / name)
    return found


def project_dir(name: str, marker: str) -> Path:
    """The first candidate folder holding ``marker`` (a relative file path); the checkout's when
    none does, so that a later error names the expected place."""
    for c in candidates(name):
        if (c / marker).is_file():
            return c
    return candidates(name)[0]
