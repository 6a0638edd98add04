"""Names vulture (the dead-code check of scripts/test.sh) must not report, each with why.

Run: ``vulture edgecompile tests bench scripts/vulture_whitelist.py --min-confidence 60``. A name
listed here is used where vulture cannot see it; dead code is deleted, not listed, except in the
last section.
"""
# ruff: noqa
_ = object()

# flatbuffer object API (ai_edge_litert.schema_py_generated): fields read by Pack()
_.asymmetricQuantizeInputs, _.depthMultiplier, _.dilationHFactor, _.dilationWFactor, _.filterHeight
_.filterWidth, _.halfPixelCenters, _.keepDims, _.keepNumDims, _.newShape, _.numSplits, _.strideH, _.strideW
_.vectorNumElems  # flatbuffers.Builder's own field, set when a vector is written by hand

# onnxruntime SessionOptions fields, read by the runtime; a buffer kept alive on the session
_.graph_optimization_level, _.inter_op_num_threads, _.intra_op_num_threads, _.log_severity_level
_._edgecompile_buffers

# Hugging Face config field set by the zoo tests; iterator protocol of onnxruntime calibration readers
_._attn_implementation, _.get_next, _.rewind

# module __getattr__ (PEP 562: edgecompile.ir loads its torch names on first use)
__getattr__

# dataclass fields: written to report.json / manifests by asdict(), or public results
degraded, emulator, l2_kib, output_shape, stored_bytes
mean_abs_error, rel_rmse, values_per_sample, positive_rate_reference  # fidelity.OutputResult -> report.json
build_log  # tests/runtime/cmodel_harness.py: kept for a failing run's message

# converter parameters that mirror the ATen signature (torch.ops.aten.*), passed by keyword
half_to_float, hxw, implicit, sparse_grad

# pytest: fixtures and markers found by name; models looked up by name in parametrized tests
make_low_rank, one_thread, pytestmark, unet_bilinear_data, unet_transposed_data
zdata  # tests/container/test_codecs.py unpacks (data, records) and checks the records

# rich.console.Console hooks and attributes we override (cli._console)
_.on_broken_pipe, _.quiet
