"""`edgecompile analyze`: per-layer spectra, sensitivity to each compression the passes offer, a
recommended compression per layer, rank rules compared at equal size, and the intrinsic dimension."""

from .run import AnalyzeConfig, AnalyzeError, analyze

__all__ = ["AnalyzeConfig", "AnalyzeError", "analyze"]
