"""edgecompile: PyTorch model -> compressed, verified edge bundle."""
__version__ = "0.1.0"


def __getattr__(name):
    """`from edgecompile import SVDLinear, Tucker2Conv, TTLinear` (torch is imported only then: the
    bundle's loader imports this package on boards without torch)."""
    if name in ("SVDLinear", "Tucker2Conv", "TTLinear"):
        from . import factorized
        return getattr(factorized, name)
    raise AttributeError(f"module 'edgecompile' has no attribute {name!r}")
