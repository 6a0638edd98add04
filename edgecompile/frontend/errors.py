"""Frontend errors: each is a `ValueError` with a one-line message that says what to do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .source import Frame
from ..errors import InputError


class FrontendError(InputError, ValueError):
    """The model cannot be imported (export failed, a non-tensor input, an internal mismatch)."""


@dataclass(frozen=True)
class UnsupportedNode:
    """One FX node the op table cannot convert."""

    op: str                      # 'aten.cumsum.default'
    frame: Frame | None          # the user's source line, when the stack trace has one
    reason: str = ""             # set when the op is known but these arguments are not
    module: str = ""             # 'avgpool (AdaptiveAvgPool2d)': the innermost module it ran in

    def describe(self) -> str:
        what = self.op + (f" ({self.reason})" if self.reason else "") + (f" in {self.module}" if self.module else "")
        if self.frame is None:
            return what
        return f"{what} at {self.frame.location} (in {self.frame.func}: `{self.frame.code}`)"


class UnsupportedOpError(FrontendError):
    """One or more operators of the model have no IR conversion.

    The message names every unsupported op with the user's source line, and lists the supported
    ops, on one line. `nodes` keeps the details.
    """

    def __init__(self, nodes: Sequence[UnsupportedNode], supported: Sequence[str]):
        seen, unique = set(), []
        for n in nodes:
            key = (n.op, n.reason, n.frame.location if n.frame else "")
            if key not in seen:
                seen.add(key)
                unique.append(n)
        self.nodes = tuple(unique)
        self.ops = tuple(dict.fromkeys(n.op for n in unique))
        head = "unsupported operator" + ("s " if len(unique) > 1 else " ")
        super().__init__(head + ", ".join(n.describe() for n in unique)
                         + f"; rewrite the model to avoid {'them' if len(unique) > 1 else 'it'} or ask for an IR conversion;"
                         + " supported: "
                         + ", ".join(supported))
