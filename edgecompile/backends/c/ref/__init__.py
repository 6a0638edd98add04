"""The numpy integer reference of the C backend: TFLite's int8 kernel semantics, bit for bit.

`kernels` holds one pure function per C kernel (``runtime/src/ecm_kernels.c``), `fixedpoint` the
requantization arithmetic, `params` the kernel parameters from scales, `graph` a quantized IR graph
run through the kernels (the specification of what the generated C computes).
"""

from .fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from .kernels import activation_range, add, avg_pool2d, conv2d, fully_connected, max_pool2d, mean_hw

__all__ = ["quantize_multiplier", "multiply_by_quantized_multiplier", "activation_range", "conv2d",
           "fully_connected", "add", "max_pool2d", "avg_pool2d", "mean_hw"]
