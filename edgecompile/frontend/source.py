"""Where an FX node came from: the user's source line and the module path.

`torch.export` records on each node a `stack_trace` (Python traceback text, innermost frame last)
and an `nn_module_stack` (module paths from the root to the innermost module). Decomposed nodes
inherit both from the op they came from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache

import torch

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>[^\n]+)\n(?P<code>[^\n]*)')
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_OUR_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    func: str
    code: str

    @property
    def location(self) -> str:
        """'path/file.py:LINE' with the path shortened (relative to cwd, or from site-packages)."""
        return f"{short_path(self.file)}:{self.line}"


@cache
def short_path(path: str) -> str:
    marker = os.sep + "site-packages" + os.sep
    if marker in path:
        return path.split(marker, 1)[1]
    try:
        rel = os.path.relpath(path)
    except ValueError:          # another drive (Windows)
        return os.path.basename(path)
    return os.path.basename(path) if rel.startswith("..") else rel


def user_frame(stack_trace: str | None) -> Frame | None:
    """The innermost frame outside torch (and this package): the line in the user's model code."""
    if not stack_trace:
        return None
    best = None
    for m in _FRAME.finditer(stack_trace):
        path = os.path.abspath(m["file"])
        if path.startswith(_TORCH_DIR) or path.startswith(_OUR_DIR):
            continue
        best = Frame(m["file"], int(m["line"]), m["func"].strip(), m["code"].strip())
    return best


def module_of(node: torch.fx.Node) -> tuple[str, str]:
    """(module path, module type name) of the innermost module the node ran in; ('', '') at top level."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, typ = list(stack.values())[-1]
    typ = typ if isinstance(typ, str) else f"{typ.__module__}.{typ.__qualname__}"
    return _clean_path(path), typ


def _clean_path(path: str) -> str:
    # strict-mode exports spell paths as "L['self'].features.0" or "L__self___features_0".
    path = re.sub(r"^L\['self'\]\.?", "", path)
    return path
