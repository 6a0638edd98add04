/* ecm.h - int8 inference kernels of the C backend (TFLite's integer semantics, bit for bit).
 *
 * The specification of every kernel is its numpy twin in edgecompile/backends/c_ref/kernels.py;
 * tests/runtime/test_kernels.py holds the two equal byte for byte.
 *
 * Conventions:
 *   - Layout NHWC. Activations [n, h, w, c]; conv weights [out_c, kh, kw, in_c / groups] (OHWI);
 *     fully connected weights [out, in]. Depthwise is groups == in_c: output channel o reads input
 *     channel o / (out_c / groups) (TFLite's depth-multiplier order).
 *   - int8 activations with per-tensor zero points; int8 weights, symmetric (zero point 0), per
 *     output channel; int32 bias (may be NULL).
 *   - acc = sum((x - in_zp) * w) in int32 (padding contributes nothing), + bias (saturated to
 *     int32), then ecm_requantize(acc, multiplier[c], shift[c]) + out_zp, clamped to
 *     [act_min, act_max] (the fused ReLU / ReLU6 as an int8 range).
 *   - C99, no allocation, no global state. Every kernel checks its shapes and parameters once,
 *     before it reads or writes anything, and returns an ecm_status. Inputs and outputs must not
 *     overlap, except ecm_add whose output may be one of its inputs.
 *
 *   ecm_conv_params p = {...};  ecm_quant q = {mult, shift, out_c};
 *   ecm_status s = ecm_conv2d(&p, &q, in_dims, in, w_dims, w, bias, out_dims, out);
 */
#ifndef ECM_H
#define ECM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ECM_OK = 0,
    ECM_E_ARG = -1,   /* a NULL pointer or a parameter out of range */
    ECM_E_SHAPE = -2, /* dimensions that do not agree (channels, groups, output size) */
    ECM_E_RANGE = -3,  /* sizes beyond what int32 accumulation is proven safe for */
    ECM_E_WEIGHTS = -4 /* generated models: a weight tensor of the container did not decode */
} ecm_status;

/* Most dimensions of ecm_transpose. */
#define ECM_MAX_DIMS 6

/* Largest conv / fully connected patch (kh * kw * in_c / groups, or in): 65535 * 255 * 128 <
 * 2^31 - 1, so the int32 accumulator cannot overflow before the bias is added. */
#define ECM_MAX_PATCH 65535
/* Largest global-mean window (h * w): 8421504 * 255 < 2^31 - 1. */
#define ECM_MAX_MEAN_WINDOW 8421504
/* TFLite's int8 ADD shifts each input left by 20 bits before its multiplier. */
#define ECM_ADD_LEFT_SHIFT 20

/* A tensor's dimensions, NHWC (fully connected uses n = batches, c = features, h = w = 1). */
typedef struct {
    int32_t n, h, w, c;
} ecm_dims;

/* Requantization multipliers: count == 1 (per tensor) or count == output channels. Each
 * multiplier is in [0, 2^31), each shift in [-31, 30] (see ecm_requantize). */
typedef struct {
    const int32_t *multiplier;
    const int32_t *shift;
    int32_t count;
} ecm_quant;

typedef struct {
    int32_t stride_h, stride_w;     /* >= 1 */
    int32_t dilation_h, dilation_w; /* >= 1 */
    int32_t pad_top, pad_left, pad_bottom, pad_right; /* >= 0 */
    int32_t groups;                 /* >= 1; in_c == groups * w_dims.c, out_c % groups == 0 */
    int32_t input_zp, output_zp;    /* [-128, 127] */
    int32_t act_min, act_max;       /* -128 <= act_min <= act_max <= 127 */
} ecm_conv_params;

typedef struct {
    int32_t input_zp, output_zp;
    int32_t act_min, act_max;
} ecm_fc_params;

typedef struct {
    int32_t a_zp, b_zp, output_zp;
    int32_t a_multiplier, a_shift, b_multiplier, b_shift; /* shifts <= 0 (multipliers < 1) */
    int32_t output_multiplier, output_shift;
    int32_t left_shift; /* [0, 20]; TFLite: ECM_ADD_LEFT_SHIFT */
    int32_t act_min, act_max;
} ecm_add_params;

typedef struct {
    int32_t kernel_h, kernel_w; /* >= 1 */
    int32_t stride_h, stride_w; /* >= 1 */
    int32_t pad_top, pad_left, pad_bottom, pad_right; /* [0, kernel): no window is all padding */
    int32_t act_min, act_max;
} ecm_pool_params;

typedef struct {
    int32_t input_zp, output_zp;
    int32_t multiplier, shift; /* s_in / s_out, or with 1 / (h * w) folded in when divide == 0 */
    int32_t divide;            /* 1: TFLite's integer Mean (MEAN keep_dims over h, w): scale, then
                                * divide by h * w rounding half away from zero; 0: QuantizedMeanOrSum
                                * (every other MEAN): one scaling */
} ecm_mean_params;

/* TFLite's MultiplyByQuantizedMultiplier (double rounding): x * multiplier * 2^(shift - 31),
 * rounded to nearest in two steps (the high multiply: ties toward +infinity; the right shift:
 * ties away from zero). A left shift (shift > 0) saturates
 * to int32 where TFLite's would overflow. Requires multiplier >= 0 and shift in [-31, 30]. */
int32_t ecm_requantize(int32_t x, int32_t multiplier, int32_t shift);

/* 2-D convolution (grouped and depthwise included). out_dims must be exactly the output size:
 * (h + pad_top + pad_bottom - dilation_h * (kh - 1) - 1) / stride_h + 1, likewise for w. */
ecm_status ecm_conv2d(const ecm_conv_params *p, const ecm_quant *q, ecm_dims in_dims, const int8_t *in,
                      ecm_dims w_dims, const int8_t *weights, const int32_t *bias, ecm_dims out_dims,
                      int8_t *out);

/* out[b, o] = requant(sum_i (in[b, i] - input_zp) * w[o, i] + bias[o]). */
ecm_status ecm_fully_connected(const ecm_fc_params *p, const ecm_quant *q, int32_t batches, int32_t in_features,
                               int32_t out_features, const int8_t *in, const int8_t *weights,
                               const int32_t *bias, int8_t *out);

/* Elementwise a + b of `count` int8 values with two-input requantization (TFLite's ADD). */
ecm_status ecm_add(const ecm_add_params *p, size_t count, const int8_t *a, const int8_t *b, int8_t *out);

/* Max / average pooling over in-bounds elements (padding never counted), NHWC; out_dims.c ==
 * in_dims.c and the spatial output size as for convolution with dilation 1. */
ecm_status ecm_max_pool2d(const ecm_pool_params *p, ecm_dims in_dims, const int8_t *in, ecm_dims out_dims,
                          int8_t *out);
ecm_status ecm_avg_pool2d(const ecm_pool_params *p, ecm_dims in_dims, const int8_t *in, ecm_dims out_dims,
                          int8_t *out);

/* Mean over h and w (global average pooling): out is [n, 1, 1, c]. */
ecm_status ecm_mean_hw(const ecm_mean_params *p, ecm_dims in_dims, const int8_t *in, int8_t *out);

/* ---- data movement (no arithmetic: the same bytes, moved or clamped) ---- */

/* out[i] = min(max(in[i], lo), hi): an activation clamp that no kernel before it could fuse.
 * in == out is allowed. */
ecm_status ecm_clip(size_t count, const int8_t *in, int32_t lo, int32_t hi, int8_t *out);

/* Constant padding of NHWC data: out is [n, h + top + bottom, w + left + right, c], the border
 * filled with `value` (an int8, e.g. the zero point). */
typedef struct {
    int32_t top, left, bottom, right; /* >= 0 */
    int32_t value;                    /* [-128, 127] */
} ecm_pad_params;
ecm_status ecm_pad(const ecm_pad_params *p, ecm_dims in_dims, const int8_t *in, int8_t *out);

/* out = in transposed: in has `ndim` (1..ECM_MAX_DIMS) dimensions `shape`, output dimension k is
 * input dimension perm[k] (numpy's transpose). */
ecm_status ecm_transpose(int32_t ndim, const int32_t *shape, const int32_t *perm, const int8_t *in, int8_t *out);

/* Name of a status, e.g. "ECM_E_SHAPE". */
const char *ecm_status_name(ecm_status s);

#ifdef __cplusplus
}
#endif
#endif /* ECM_H */
