"""Per-layer settings under one gate: the Lagrangian allocation `--optimize` and `edgecompile
analyze` share (`Allocation`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


class Allocation:
    """Per-layer settings chosen by one Lagrange multiplier: each layer takes the option minimizing
    ``bytes + multiplier * cost`` (or keeps its current form), and the smallest multiplier whose
    *joint* result passes the gate wins, found by bisection (`search`).

    Solo costs add up when layers change together, so bytes are spent where they buy the most: an
    equal-slope allocation, not one cost cap for every layer (measured on MiniLM at cosine 0.99:
    one cap kept the 11.7M-entry embedding at 4.8 bits a weight because its cost was above what the
    small layers could afford). Used by `--optimize` and by `edgecompile analyze`'s recommendation.

    Parameters
    ----------
    options : per layer, (cost, bytes) of each option; a cost is how much the option alone lowers
        the gate's score; options costing more than `base` (failing alone) are never taken
    keep : per layer, the bytes of keeping it as it is (cost 0)
    base : the gate score with nothing changed
    """

    def __init__(self, options: Sequence[Sequence[tuple[float, float]]], keep: Sequence[float], base: float):
        self.options = [[(max(c, 0.0), b) if np.isfinite(c) and c <= base and b < k else None for c, b in opts]
                        for opts, k in zip(options, keep)]
        self.keep = list(keep)
        cuts = set()                      # the multipliers where some layer's choice changes
        for opts, k in zip(self.options, self.keep):
            pts = [(0.0, k)] + [o for o in opts if o is not None]
            cuts.update((b1 - b2) / (c2 - c1) for c1, b1 in pts for c2, b2 in pts if c2 > c1 and b2 < b1)
        # ascending: most compression first; at the end every layer keeps its form, which passes
        self.lams = sorted(cuts) + [np.inf]

    def picks(self, lam: float) -> list[int | None]:
        """Each layer's option index at multiplier `lam` (None: keep)."""
        out = []
        for opts, k in zip(self.options, self.keep):
            best, val = None, k
            for j, o in enumerate(opts):
                if o is not None and o[1] + lam * o[0] < val:
                    best, val = j, o[1] + lam * o[0]
            out.append(best)
        return out

    def bytes_at(self, k: int) -> float:
        """Total bytes of the picks at multiplier index `k` (the sum of what each layer keeps or takes)."""
        return sum(k_ if j is None else opts[j][1]
                   for opts, k_, j in zip(self.options, self.keep, self.picks(self.lams[k])))

    def fallbacks(self, top: int, step: float, count: int) -> list[int]:
        """Multiplier indices from `top` on, each the first whose bytes reach `step` times the last
        one's, at most `count` in all; never the last index (every layer kept). Bytes grow with
        the multiplier, so each is found by bisection."""
        ks, end = [top], len(self.lams) - 1
        while len(ks) < count:
            want, lo, hi = step * self.bytes_at(ks[-1]), ks[-1] + 1, end
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (mid + 1, hi) if self.bytes_at(mid) < want else (lo, mid)
            if lo >= end:
                break
            ks.append(lo)
        return ks

    def search(self, joint: Callable[[list[int | None]], float], base: float,
               stop: Callable[[], bool] = lambda: False) -> dict[int, float]:
        """Bisection for the smallest multiplier whose joint score (`joint(picks)`) is >= 0.
        Returns {index into `lams`: joint score} of every multiplier found to pass (the last index,
        keeping every layer, is `base`). `stop()` ends the bisection early once one has passed."""
        passing = {len(self.lams) - 1: base}
        lo, hi = 0, len(self.lams) - 2
        while lo <= hi and not (stop() and len(passing) > 1):
            mid = (lo + hi) // 2
            s = joint(self.picks(self.lams[mid]))
            if s >= 0:
                passing[mid], hi = s, mid - 1
            else:
                lo = mid + 1
        return passing
