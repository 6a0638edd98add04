"""C text of the sequence / attention / MobileNet-style steps of generated ``model.c``.

`emit_step` writes the call of one kernel of the second section of ``runtime/include/ecm.h``
(``ecm_add_bcast``, ``ecm_mul``, ``ecm_lut``, ``ecm_batch_matmul``, ``ecm_softmax``,
``ecm_layer_norm``, ``ecm_mean_rows``, ``ecm_slice``, ``ecm_concat_part``, ``ecm_select``,
``ecm_where``, ``ecm_gather_rows``, ``ecm_equal_const``) from a
step of `model` (`ref.graph` kernel call, storage shapes); `writer.Writer.step` calls it
first. Constants (lookup tables, quantized constant operands, layer-norm gamma / beta, parameter
structs) go to `consts` as ``static const`` definitions named after the step (``L<i>_...``): flash;
arrays through `Consts.array`, which writes equal arrays once.
"""

from __future__ import annotations

import numpy as np

from .writer import Consts

__all__ = ["emit_step", "STEP_KERNELS"]

STEP_KERNELS = ("add", "mul", "lut", "batch_matmul", "softmax", "layer_norm", "mean_axes", "slice", "concat",
                "select", "gather_rows", "equal_const", "take")


def _braces(values) -> str:
    return "{" + ", ".join(str(int(v)) for v in values) + "}"


def _rows(shape, first: int, last: int | None = None) -> str:
    """ecm_rows of a storage shape around axes first..last (one row axis, merged)."""
    last = first if last is None else last
    outer, n, inner = (int(np.prod(shape[:first])), int(np.prod(shape[first: last + 1])),
                       int(np.prod(shape[last + 1:])))
    return f"(ecm_rows){{{outer}, {n}, {inner}}}"


def _bcast(L: str, osh, sa, sb) -> str:
    """The ``static const ecm_bcast L_s`` of two operand shapes broadcast to `osh` (ranks aligned
    on the right, as numpy)."""
    nd = len(osh)
    if nd > 6 or len(sa) > nd or len(sb) > nd:
        raise ValueError(f"{list(sa)} and {list(sb)} do not broadcast to {list(osh)} in at most 6 dimensions")
    full = lambda s: (1,) * (nd - len(s)) + tuple(s)  # noqa: E731
    pad = lambda s: _braces(list(s) + [1] * (6 - nd))  # noqa: E731
    return f"static const ecm_bcast {L}_s = {{{nd}, {pad(osh)}, {pad(full(sa))}, {pad(full(sb))}}};\n"


def _binary(kernel: str, a: dict, x: list[str], y: str, ish: list, osh, L: str, consts: Consts) -> list[str] | None:
    """add / sub / mul; None for the plain add of two activations of one shape (ecm_add, model)."""
    names = iter(zip(x, ish))
    ops = []
    for key in ("const_a", "const_b"):
        if key in a:
            ops.append((consts.array("int8_t", f"{L}_{key[-1]}", a[key]), tuple(a[key].shape)))
        else:
            ops.append(next(names))
    (pa, sa), (pb, sb) = ops
    if kernel == "add" and not a.get("subtract") and len(x) == 2 and tuple(sa) == tuple(sb) == tuple(osh):
        return None
    consts.append(_bcast(L, osh, sa, sb))
    lo, hi = a["act"]
    if kernel == "mul":
        consts.append(f"static const ecm_mul_params {L}_p = {{{a['a_zp']}, {a['b_zp']}, {a['output_zp']}, "
                      f"{a['multiplier']}, {a['shift']}, {lo}, {hi}}};\n")
        return [f"TRY(ecm_mul(&{L}_p, &{L}_s, {pa}, {pb}, {y}));"]
    consts.append(f"static const ecm_add_params {L}_p = {{{a['a_zp']}, {a['b_zp']}, {a['output_zp']}, "
                  f"{a['a_multiplier']}, {a['a_shift']}, {a['b_multiplier']}, {a['b_shift']}, "
                  f"{a['output_multiplier']}, {a['output_shift']}, {a['left_shift']}, {lo}, {hi}}};\n")
    return [f"TRY(ecm_add_bcast(&{L}_p, {int(bool(a.get('subtract')))}, &{L}_s, {pa}, {pb}, {y}));"]


def emit_step(kernel: str, a: dict, x: list[str], y: str, ish: list, osh, L: str, consts: Consts
              ) -> list[str] | None:
    """The C lines of one step, or None when `kernel` is not one of `STEP_KERNELS` (or is a plain
    add). `x` / `y`: the C expressions of the inputs / output, `ish` / `osh` their storage shapes."""
    count = int(np.prod(osh))
    if kernel in ("add", "mul"):
        return _binary(kernel, a, x, y, ish, osh, L, consts)
    if kernel == "lut":
        table = consts.array("int8_t", f"{L}_table", a["table"], comment=a.get("fn", "lookup"))
        return [f"TRY(ecm_lut({count}u, {x[0]}, {table}, {y}));"]
    if kernel == "select":
        t, f = ("ECM_WHERE_X" if a[k] is None else a[k] for k in ("if_true", "if_false"))
        if len(x) == 1 and tuple(ish[0]) == tuple(osh):
            return [f"TRY(ecm_select({count}u, {x[0]}, {t}, {f}, {y}));"]
        consts.append(_bcast(L, osh, ish[0], ish[1] if len(x) > 1 else osh))
        return [f"TRY(ecm_where(&{L}_s, {x[0]}, {x[1] if len(x) > 1 else 'NULL'}, {t}, {f}, {y}));"]
    if kernel == "gather_rows":
        vocab, row = a["table"].shape
        table = consts.array("int8_t", f"{L}_table", a["table"])
        return [f"TRY(ecm_gather_rows({int(np.prod(ish[0]))}u, {x[0]}, {vocab}, {row}, {table}, {y}));"]
    if kernel == "equal_const":
        return [f"TRY(ecm_equal_const({count}u, {x[0]}, {a['width']}, {a['value']}, {y}));"]
    if kernel == "batch_matmul":
        d, lo, hi = a["dims"], *a["act"]
        consts.append(f"static const ecm_matmul_params {L}_p = {{{a['a_zp']}, {a['b_zp']}, {a['output_zp']}, "
                      f"{a['multiplier']}, {a['shift']}, {lo}, {hi}}};\n")
        consts.append(f"static const ecm_matmul_dims {L}_d = {{{_braces(d['batch'])}, {d['m']}, {d['k']}, {d['n']}, "
                      f"{_braces(d['a_stride'])}, {_braces(d['b_stride'])}, {_braces(d['out_stride'])}, "
                      f"{int(np.prod(ish[0]))}, {int(np.prod(ish[1]))}, {count}}};\n")
        return [f"TRY(ecm_batch_matmul(&{L}_p, &{L}_d, {x[0]}, {x[1]}, {y}));"]
    if kernel == "softmax":
        table = consts.array("uint16_t", f"{L}_table", a["table"])
        return [f"TRY(ecm_softmax({_rows(ish[0], a['axis'])}, {table}, {x[0]}, {y}));"]
    if kernel == "layer_norm":
        gamma, beta = consts.array("int32_t", f"{L}_gamma", a["gamma"]), consts.array("int64_t", f"{L}_beta", a["beta"])
        consts.append(f"static const ecm_layer_norm_params {L}_p = {{{a['input_zp']}, {a['output_zp']}, "
                      f"INT64_C({a['eps']}), {a['var_shift']}, {a['shift']}}};\n")
        return [f"TRY(ecm_layer_norm(&{L}_p, {_rows(ish[0], a['axis'])}, {gamma}, {beta}, {x[0]}, {y}));"]
    if kernel == "mean_axes":
        axes = sorted(a["axes"])
        consts.append(f"static const ecm_mean_params {L}_p = {{{a['input_zp']}, {a['output_zp']}, "
                      f"{a['multiplier']}, {a['shift']}, 0}};\n")
        return [f"TRY(ecm_mean_rows(&{L}_p, {_rows(ish[0], axes[0], axes[-1])}, {x[0]}, {y}));"]
    if kernel == "slice":
        n = len(range(a["start"], a["end"], a["step"]))
        return [f"TRY(ecm_slice({_rows(ish[0], a['axis'])}, {a['start']}, {a['step']}, {n}, {x[0]}, {y}));"]
    if kernel == "take":
        idx = consts.array("int32_t", f"{L}_idx", a["indices"])
        return [f"TRY(ecm_take({_rows(ish[0], a['axis'])}, {idx}, {len(a['indices'])}, {x[0]}, {y}));"]
    if kernel == "concat":
        ax, consts_in = a["axis"], a.get("consts", {})
        outer, total = int(np.prod(osh[:ax])), int(np.prod(osh[ax:]))
        parts, acts = [], iter(zip(x, ish))
        for k in range(len(x) + len(consts_in)):
            if k in consts_in:
                parts.append((consts.array("int8_t", f"{L}_c{k}", consts_in[k]), consts_in[k].shape))
            else:
                parts.append(next(acts))
        lines, offset = [], 0
        for ptr, shape in parts:
            part = int(np.prod(shape[ax:]))
            lines.append(f"TRY(ecm_concat_part({outer}, {part}, {total}, {offset}, {ptr}, {y}));")
            offset += part
        return lines
    return None
