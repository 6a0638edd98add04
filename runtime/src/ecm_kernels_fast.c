/* ecm_kernels_fast.c - fast paths of ecm_conv2d and ecm_fully_connected (see ecm_fast.h).
 *
 * This file holds what every architecture shares: the requantization (the same value as
 * ecm_requantize in fewer steps), output windows (which taps of a pixel lie inside the input:
 * padding adds nothing) and the two hooks. The loops are per architecture:
 *   ecm_fast_dsp.h   Cortex-M4 / M7 / M33: two pixels' patches as halfword pairs on the stack,
 *                    2 pixels x 2 channels of dual 16-bit MACs
 *   ecm_fast_neon.h  AArch64: pixels with the same window paired, 2 pixels x 4 channels of NEON
 *                    MACs (SDOT where the CPU has it)
 * each defining ecmf_dense (groups == 1) and ecmf_depthwise (groups == in_c == out_c).
 * Fully connected is the 1x1 convolution of a 1 x batches image. */
#include <limits.h>
#include <string.h>

#include "ecm_fast.h"

#if ECM_FAST

#if defined(__GNUC__)
#define ECMF_INLINE static inline __attribute__((always_inline)) /* -Os would call them per output */
#define ECMF_NOINLINE __attribute__((noinline)) /* loops that want every register to themselves */
#else
#define ECMF_INLINE static inline
#define ECMF_NOINLINE
#endif

#if ECM_FAST_DSP && defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
static inline int32_t ecmf_qadd(int32_t a, int32_t b) { return __qadd(a, b); }
#elif ECM_FAST_NEON
#include <arm_neon.h>
static inline int32_t ecmf_qadd(int32_t a, int32_t b) { return vqadds_s32(a, b); }
#else
static inline int32_t ecmf_qadd(int32_t a, int32_t b) {
    const int64_t s = (int64_t)a + b;
    return (int32_t)(s > INT32_MAX ? INT32_MAX : (s < INT32_MIN ? INT32_MIN : s));
}
#endif

/* ---------------------------------------------------------------- requantization */

/* What turns an int32 sum into an output byte. lo / hi are the act range minus the output zero
 * point, so that clamping before adding it is exact for every int32. */
typedef struct {
    const int32_t *mult, *shift, *bias;
    int32_t q_step;     /* 1: a multiplier per channel; 0: one for all */
    int32_t below_half; /* every shift <= -1 */
    int32_t out_zp, lo, hi;
} ecmf_out;

static void ecmf_out_init(ecmf_out *o, const ecm_quant *q, const int32_t *bias, int32_t out_zp, int32_t act_min,
                          int32_t act_max) {
    int32_t i;
    o->mult = q->multiplier, o->shift = q->shift, o->bias = bias, o->q_step = q->count == 1 ? 0 : 1;
    o->out_zp = out_zp, o->lo = act_min - out_zp, o->hi = act_max - out_zp;
    o->below_half = 1;
    for (i = 0; i < q->count; i++) o->below_half &= q->shift[i] <= -1;
}

/* ecm_requantize(x, mult, shift), every case: the doubling high multiply rounds half up whatever
 * the signs (its nudge 1 - 2^30 for negative products and C's truncation toward zero make
 * floor((x * m + 2^30) / 2^31)), then the shift rounds half away from zero. */
static int32_t ecmf_scale(int32_t x, int32_t mult, int32_t shift) {
    int32_t r, e, mask;
    if (shift > 0) { /* saturating left shift (multipliers above 1) */
        x = x > (INT32_MAX >> shift) ? INT32_MAX : (x < (INT32_MIN >> shift) ? INT32_MIN : x * (1 << shift));
        e = 0;
    } else {
        e = -shift;
    }
    r = (int32_t)(((int64_t)x * mult + ((int64_t)1 << 30)) >> 31); /* mult < 2^31: fits int32 */
    mask = (int32_t)(((uint32_t)1 << e) - 1u);
    return (r >> e) + ((r & mask) > (mask >> 1) + (r < 0 ? 1 : 0) ? 1 : 0);
}

/* The output byte of sum acc for a channel of (mult, shift): ecm_requantize(acc + bias), clamped. */
ECMF_INLINE int8_t ecmf_out_byte(const ecmf_out *o, int32_t acc, int32_t bias, int32_t mult, int32_t shift) {
    int32_t r = ecmf_scale(ecmf_qadd(acc, bias), mult, shift); /* saturating, as ecm_conv2d's int64 sum */
    r = r < o->lo ? o->lo : (r > o->hi ? o->hi : r);
    return (int8_t)(r + o->out_zp);
}

/* ecm_requantize for shift = -(e1 + 1) <= -1 (multipliers below 1/2: nearly every layer), every
 * int32 x, both roundings in one multiply-add and one shift: with r = floor((x m + 2^30) / 2^31),
 * h = 2^e1 and s = -1 for x < 0 (else 0), the rounding shift by e = e1 + 1 is floor((r + h + s) /
 * 2^e) (half away from zero; where x < 0 but r == 0, s changes nothing), which is
 * floor(P / 2^(32 + e1)) with P = x m + 2^30 + (h + s) 2^31, |P| < 2^62: one SMLAL into a
 * 64-bit P, and the high word shifted right by e1. */
ECMF_INLINE int32_t ecmf_scale_below_half(int32_t x, int32_t mult, int32_t h, int32_t e1) {
    const int64_t t = h + (x >> 31); /* in [0, 2^30] */
    const int64_t p = (int64_t)x * mult + (t * ((int64_t)1 << 31) + ((int64_t)1 << 30));
    return (int32_t)(p >> 32) >> e1;
}

/* Output bytes of channels c0 .. c0 + n - 1: ya[j] from sum acc[j * stride], and with yb (a pixel
 * pair) yb[j] from acc[j * stride + 1]. */
static ECMF_NOINLINE void ecmf_store(const ecmf_out *o, const int32_t *acc, int32_t stride, int32_t c0, int32_t n,
                                       int8_t *ya, int8_t *yb) {
    const int32_t qs = o->q_step, *mp = o->mult + c0 * qs, *sp = o->shift + c0 * qs;
    const int32_t *bp = o->bias != NULL ? o->bias + c0 : NULL;
    int32_t j;
    for (j = 0; j < n; j++, acc += stride, mp += qs, sp += qs) {
        const int32_t bias = bp != NULL ? bp[j] : 0;
        ya[j] = ecmf_out_byte(o, acc[0], bias, *mp, *sp);
        if (yb != NULL) yb[j] = ecmf_out_byte(o, acc[1], bias, *mp, *sp);
    }
}

/* ---------------------------------------------------------------- windows */

/* Geometry of one ecm_conv2d call. */
typedef struct {
    const ecm_conv_params *p;
    ecm_dims in, w, out;
    const int8_t *in_data, *weights;
    int8_t *out_data;
    int32_t patch; /* weights per output channel: kh * kw * in_c / groups <= ECM_MAX_PATCH */
    ecmf_out o;
} ecmf_conv;

/* Taps [*k0, *k1) of a kernel of k taps, dilation d, its first tap at input coordinate s, that
 * fall inside [0, size); an empty range (*k0 == *k1) when none does. */
static void ecmf_taps(int32_t s, int32_t k, int32_t d, int32_t size, int32_t *k0, int32_t *k1) {
    const int32_t a = s >= 0 ? 0 : (-s + d - 1) / d;
    int32_t b = s >= size ? 0 : (size - s + d - 1) / d;
    b = b > k ? k : b;
    *k0 = a;
    *k1 = b < a ? a : b;
}

/* A window as runs of contiguous bytes: rows x cols runs of len bytes; the input and weight
 * addresses advance by x_row / w_row from row to row, by x_col / w_col from column to column. */
typedef struct {
    int32_t rows, cols, len;
    int32_t x_row, x_col, w_row, w_col;
} ecmf_patch;

/* Depthwise sums of the n channels at x (channel c's taps from w, `taps` a channel) that a
 * vector block would read past: the last in_c % block channels. */
static void ecmf_dw_tail(const ecmf_patch *pt, const int8_t *x, const int8_t *w, int32_t taps, int32_t n, int32_t zp,
                         int32_t *acc) {
    int32_t r, c, j;
    for (j = 0; j < n; j++) acc[j] = 0;
    for (r = 0; r < pt->rows; r++)
        for (c = 0; c < pt->cols; c++) {
            const int8_t *xp = x + (ptrdiff_t)r * pt->x_row + (ptrdiff_t)c * pt->x_col;
            const int8_t *wp = w + (ptrdiff_t)r * pt->w_row + (ptrdiff_t)c * pt->w_col;
            for (j = 0; j < n; j++) acc[j] += (xp[j] - zp) * wp[(ptrdiff_t)j * taps];
        }
}

#if ECM_FAST_DSP
#include "ecm_fast_dsp.h"
#else
#include "ecm_fast_neon.h"
#endif

/* ---------------------------------------------------------------- the hooks */

int ecm_conv2d_fast(const ecm_conv_params *p, const ecm_quant *q, ecm_dims in_dims, const int8_t *in,
                    ecm_dims w_dims, const int8_t *weights, const int32_t *bias, ecm_dims out_dims, int8_t *out) {
    ecmf_conv cv;
    cv.p = p, cv.in = in_dims, cv.w = w_dims, cv.out = out_dims;
    cv.in_data = in, cv.weights = weights, cv.out_data = out;
    cv.patch = w_dims.h * w_dims.w * w_dims.c;
    ecmf_out_init(&cv.o, q, bias, p->output_zp, p->act_min, p->act_max);
    if (p->groups == 1) return ecmf_dense(&cv);
    if (p->groups == in_dims.c && out_dims.c == in_dims.c) return ecmf_depthwise(&cv);
    return 0; /* grouped, or depth multiplier > 1: the portable loop */
}

int ecm_fully_connected_fast(const ecm_fc_params *p, const ecm_quant *q, int32_t batches, int32_t in_features,
                             int32_t out_features, const int8_t *in, const int8_t *weights, const int32_t *bias,
                             int8_t *out) {
    ecm_conv_params cp;
    ecm_dims din, dw, dout;
    memset(&cp, 0, sizeof cp);
    cp.stride_h = cp.stride_w = cp.dilation_h = cp.dilation_w = cp.groups = 1;
    cp.input_zp = p->input_zp, cp.output_zp = p->output_zp, cp.act_min = p->act_min, cp.act_max = p->act_max;
    din.n = 1, din.h = 1, din.w = batches, din.c = in_features;
    dw.n = out_features, dw.h = 1, dw.w = 1, dw.c = in_features;
    dout.n = 1, dout.h = 1, dout.w = batches, dout.c = out_features;
    return ecm_conv2d_fast(&cp, q, din, in, dw, weights, bias, dout, out);
}

#else
typedef int ecmf_empty_unit; /* ISO C: a translation unit declares something */
#endif /* ECM_FAST */
