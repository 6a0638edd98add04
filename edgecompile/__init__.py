"""edgecompile: PyTorch model -> compressed, verified edge bundle."""
__version__ = "0.1.0"
