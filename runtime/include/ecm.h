/* ecm.h - int8 inference kernels of the C backend (TFLite's integer semantics, bit for bit).
 *
 * The specification of every kernel is its numpy twin in edgecompile/backends/c/ref/kernels.py;
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

/* Fully connected with shared weight levels read in place (pruned and clustered layers): weight
 * w[o, i] = book[level(o * in_features + i)], levels packed `bits` (1, 2 or 4) to a byte, element j
 * in bits [j * bits, (j + 1) * bits) from the least significant bit; every level < levels <= 2^bits.
 * The same bytes out as ecm_fully_connected on the unpacked weights (the same int32 sums). */
ecm_status ecm_fully_connected_lut(const ecm_fc_params *p, const ecm_quant *q, int32_t batches, int32_t in_features,
                                   int32_t out_features, const int8_t *in, const uint8_t *packed, int32_t bits,
                                   const int8_t *book, int32_t levels, const int32_t *bias, int8_t *out);

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

/* ---- sequence, attention and MobileNet-style kernels (LSTM / GRU cells, transformer encoders) ----
 *
 * Element-wise kernels broadcast as numpy does (ecm_bcast: shapes of equal rank, a 1 repeats);
 * row kernels see the tensor as [outer, len, inner] (ecm_rows): rows of `len` elements `inner`
 * apart, e.g. the last axis of [n, t, c] is {n * t, c, 1}, the W axis of NHWC {n * h, w, c}. */

/* Longest softmax / layer-norm row and deepest batched matmul: 32768 * 255^2 < 2^31, so sums of
 * squares and dot products fit int32. */
#define ECM_MAX_ROW 32768

typedef struct {
    int32_t ndim;              /* 1..ECM_MAX_DIMS */
    int32_t out[ECM_MAX_DIMS]; /* output shape, >= 1 */
    int32_t a[ECM_MAX_DIMS];   /* a[k] == out[k] or 1 */
    int32_t b[ECM_MAX_DIMS];   /* b[k] == out[k] or 1 */
} ecm_bcast;

typedef struct {
    int32_t outer, len, inner; /* >= 1 */
} ecm_rows;

/* a + b (subtract == 0) or a - b (subtract == 1) with broadcasting: TFLite's ADD / SUB, the
 * arithmetic of ecm_add. */
ecm_status ecm_add_bcast(const ecm_add_params *p, int32_t subtract, const ecm_bcast *s, const int8_t *a,
                         const int8_t *b, int8_t *out);

typedef struct {
    int32_t a_zp, b_zp, output_zp;
    int32_t multiplier, shift; /* s_a * s_b / s_out */
    int32_t act_min, act_max;
} ecm_mul_params;

/* a * b with broadcasting, TFLite's MUL: requant((a - a_zp) * (b - b_zp)) + output_zp, clamped. */
ecm_status ecm_mul(const ecm_mul_params *p, const ecm_bcast *s, const int8_t *a, const int8_t *b, int8_t *out);

/* out[i] = table[in[i] + 128]: sigmoid, tanh, hard-swish, GELU, SiLU... as the 256 values computed
 * at build time from the input and output quantization. in == out is allowed. */
ecm_status ecm_lut(size_t count, const int8_t *in, const int8_t *table, int8_t *out);

typedef struct {
    int32_t a_zp, b_zp, output_zp;
    int32_t multiplier, shift; /* s_a * s_b / s_out */
    int32_t act_min, act_max;
} ecm_matmul_params;

/* Where each operand's elements are: element strides (>= 0; 0 repeats a broadcast axis) of two
 * batch axes, the row axis and the column axis, so that any storage layout (NHWC included) is
 * read in place. size: the operand's buffer length, which every reachable offset must be below. */
typedef struct {
    int32_t batch[2];    /* output batch axes (1 where absent) */
    int32_t m, k, n;     /* out[.., m, n] = sum_k a[.., m, k] * b[.., k, n]; k <= ECM_MAX_ROW */
    int32_t a_stride[4]; /* batch 0, batch 1, m, k */
    int32_t b_stride[4]; /* batch 0, batch 1, k, n */
    int32_t out_stride[4]; /* batch 0, batch 1, m, n */
    int32_t a_size, b_size, out_size;
} ecm_matmul_dims;

/* Batched a @ b of two int8 activations, TFLite's BATCH_MATMUL: acc = sum (a - a_zp) * (b - b_zp),
 * requant + output_zp, clamped. */
ecm_status ecm_batch_matmul(const ecm_matmul_params *p, const ecm_matmul_dims *d, const int8_t *a, const int8_t *b,
                            int8_t *out);

/* Softmax along rows, output scale 1/256 and zero point -128: with d = max(row) - x,
 * e = table[d] (round(65535 * exp(-s_in * d)), computed at build time) and sum = sum(e),
 * out = (256 * e + sum / 2) / sum - 128, clamped. r.len <= ECM_MAX_ROW. */
ecm_status ecm_softmax(ecm_rows r, const uint16_t *table, const int8_t *in, int8_t *out);

typedef struct {
    int32_t input_zp, output_zp;
    int64_t eps;       /* [1, 2^61): eps / s_in^2 * len^2 * 4^var_shift, rounded */
    int32_t var_shift; /* [0, 20]; (len * 255)^2 * 4^var_shift + eps < 2^62 */
    int32_t shift;     /* [1, 62]: fraction bits of gamma * z + beta */
} ecm_layer_norm_params;

/* Layer norm along rows, integers only (see kernels.layer_norm in the numpy reference), with
 * d = x - input_zp and k = var_shift: t = (len * sum(d^2) - sum(d)^2) * 4^k + eps,
 * r = isqrt(t * 4^p) in [2^30, 2^31), z = round((len * d - sum(d)) * round(2^61 / r) / 2^(46 - p - k))
 * (the normalized value in Q15),
 * out = round((gamma[j] * z + beta[j]) / 2^shift) + output_zp, clamped; j is the position in the
 * row. r.len <= ECM_MAX_ROW. */
ecm_status ecm_layer_norm(const ecm_layer_norm_params *p, ecm_rows r, const int32_t *gamma, const int64_t *beta,
                          const int8_t *in, int8_t *out);

/* Mean along rows (out is [outer, inner]), TFLite's QuantizedMeanOrSum (divide == 0: 1 / len in
 * the multiplier) or, with divide == 1, scaled then divided by len as ecm_mean_hw. */
ecm_status ecm_mean_rows(const ecm_mean_params *p, ecm_rows r, const int8_t *in, int8_t *out);

/* out[o, i, :] = in[o, start + i * step, :] for i < out_len: a slice of the middle axis of
 * in = [r.outer, r.len, r.inner]; start + (out_len - 1) * step < r.len. */
ecm_status ecm_slice(ecm_rows r, int32_t start, int32_t step, int32_t out_len, const int8_t *in, int8_t *out);

/* out[o, k, :] = in[o, idx[k], :] for k < n_idx: a gather of the middle axis of in = [r.outer,
 * r.len, r.inner] by constant indices (a reversed or reflected window); every idx[k] < r.len. */
ecm_status ecm_take(ecm_rows r, const int32_t *idx, int32_t n_idx, const int8_t *in, int8_t *out);

/* One input of a concatenation: in is [outer, part], written to columns [offset, offset + part)
 * of out = [outer, total]. */
ecm_status ecm_concat_part(int32_t outer, int32_t part, int32_t total, int32_t offset, const int8_t *in, int8_t *out);

/* out[i] = cond[i] != 0 ? if_true : if_false (a mask selecting between two int8 codes). */
ecm_status ecm_select(size_t count, const int8_t *cond, int32_t if_true, int32_t if_false, int8_t *out);

/* A branch of ecm_where that reads x instead of a constant code. */
#define ECM_WHERE_X 256

/* where(cond, if_true, if_false) with broadcasting: s->a is cond's shape (bytes, nonzero is true),
 * s->b is x's; each branch is an int8 code or ECM_WHERE_X (the element of x, already in the
 * output's quantization). x may be NULL when neither branch is ECM_WHERE_X. */
ecm_status ecm_where(const ecm_bcast *s, const int8_t *cond, const int8_t *x, int32_t if_true, int32_t if_false,
                     int8_t *out);

/* Embedding lookup: out[i, :] = table[ids[i], :] for `count` ids, each 4 bytes of a little-endian
 * int32 (any alignment); table is [vocab, row] int8, already in the output's quantization.
 * ECM_E_RANGE, before anything is written, if an id is outside [0, vocab). */
ecm_status ecm_gather_rows(size_t count, const int8_t *ids, int32_t vocab, int32_t row, const int8_t *table,
                           int8_t *out);

/* out[i] = (in[i] == value) as bytes 0 / 1; in holds int8 values (width 1: a mask, == 0 is a
 * logical not) or little-endian int32 (width 4: token ids). */
ecm_status ecm_equal_const(size_t count, const int8_t *in, int32_t width, int32_t value, int8_t *out);

#ifdef __cplusplus
}
#endif
#endif /* ECM_H */
