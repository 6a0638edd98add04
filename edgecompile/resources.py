"""Where the project's data folders are: ``targets/`` and ``runtime/``.

In a source checkout (the README's editable install) they sit beside the package. A wheel carries
them as data files under ``<prefix>/share/edgecompile/`` (``[tool.setuptools.data-files]`` in
pyproject.toml), because the repository layout keeps them at the top level, outside the package.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path


def candidates(name: str) -> Iterator[Path]:
    """Folders that may hold ``name``, lazily: the checkout's, the installed wheel's (found through
    its RECORD, so ``--prefix``/``--user`` installs work too), then ``sys.prefix``'s."""
    yield Path(__file__).resolve().parent.parent / name
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("edgecompile")
    except PackageNotFoundError:
        dist = None
    key = f"share/edgecompile/{name}/"
    for f in (dist.files or ()) if dist is not None else ():
        path = str(f).replace("\\", "/")
        if key in path:
            yield Path(dist.locate_file(path[: path.index(key) + len(key)])).resolve()
            break
    yield Path(sys.prefix) / "share" / "edgecompile" / name


def project_dir(name: str, marker: str) -> Path:
    """The first candidate folder holding ``marker`` (a relative file path); the checkout's when
    none does, so that a later error names the expected place."""
    for c in candidates(name):
        if (c / marker).is_file():
            return c
    return next(candidates(name))
