"""The compression the compiler chooses by measurement, under the fidelity gate: `choose` (the int8
mode, its fallbacks, the candidates a build tries) and `optimize` (``--optimize``: each layer's
compression searched per layer)."""
