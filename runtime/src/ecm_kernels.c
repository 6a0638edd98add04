/* ecm_kernels.c - portable int8 kernels (ecm.h): TFLite's reference integer semantics.
 *
 * The readable reference: plain loops, no SIMD. Each kernel validates its shapes and parameters
 * first (ecm_check_*), then runs loops whose indices the checks have proven in bounds.
 * Relies on arithmetic right shift of negative int32 (gcc, clang and arm-none-eabi-gcc all do it;
 * TFLite and gemmlowp rely on it too). */
#include <limits.h>

#include "ecm.h"
#include "ecm_fast.h"

/* Return the status of `expr` if it is not ECM_OK. */
#define ECM_TRY(expr)                                \
    do {                                             \
        ecm_status ecm_try_s_ = (expr);              \
        if (ecm_try_s_ != ECM_OK) return ecm_try_s_; \
    } while (0)

const char *ecm_status_name(ecm_status s) {
    static const char *const names[] = {"ECM_OK", "ECM_E_ARG", "ECM_E_SHAPE", "ECM_E_RANGE", "ECM_E_WEIGHTS"};
    int i = -(int)s;
    return (i >= 0 && i <= 4) ? names[i] : "ECM_E_UNKNOWN";
}

/* ---------------------------------------------------------------- fixed point (common.h) */

/* gemmlowp's SaturatingRoundingDoublingHighMul: high 32 bits of 2ab, rounded to nearest with ties
 * toward +infinity (the negative nudge 1 - 2^30 and truncation send -2.5 to -2). */
static int32_t ecm_srdhm(int32_t a, int32_t b) {
    int64_t ab;
    int64_t nudge;
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    ab = (int64_t)a * (int64_t)b;                 /* |ab| <= 2^62 */
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31)); /* C99 division truncates toward zero */
}

/* gemmlowp's RoundingDivideByPOT: x / 2^e rounded half away from zero, e in [0, 31]. */
static int32_t ecm_rdbpot(int32_t x, int32_t e) {
    const int32_t mask = (int32_t)(((int64_t)1 << e) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (remainder > threshold ? 1 : 0);
}

int32_t ecm_requantize(int32_t x, int32_t multiplier, int32_t shift) {
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    int64_t v = (int64_t)x * ((int64_t)1 << left); /* left <= 30: |v| < 2^62 */
    if (v > INT32_MAX) v = INT32_MAX;              /* ours: saturate where TFLite overflows */
    if (v < INT32_MIN) v = INT32_MIN;
    return ecm_rdbpot(ecm_srdhm((int32_t)v, multiplier), right);
}

/* acc / count rounded half away from zero (TFLite's pooling and mean); count >= 1. */
static int32_t ecm_round_div(int64_t acc, int64_t count) {
    return (int32_t)(acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count);
}

/* Clamp to [lo, hi] (an int8 range). Takes int64 so that `requantized + zero point` never wraps. */
static int8_t ecm_clamp(int64_t v, int32_t lo, int32_t hi) {
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

/* ---------------------------------------------------------------- checks */

static int ecm_is_int8(int32_t v) { return v >= -128 && v <= 127; }

static ecm_status ecm_check_act(int32_t lo, int32_t hi) {
    return (ecm_is_int8(lo) && ecm_is_int8(hi) && lo <= hi) ? ECM_OK : ECM_E_ARG;
}

static ecm_status ecm_check_multiplier(int32_t multiplier, int32_t shift) {
    return (multiplier >= 0 && shift >= -31 && shift <= 30) ? ECM_OK : ECM_E_ARG;
}

/* All dimensions >= 1 and n * h * w * c <= INT32_MAX, so every index below fits int32 and size_t. */
static ecm_status ecm_check_dims(ecm_dims d) {
    int64_t count;
    if (d.n < 1 || d.h < 1 || d.w < 1 || d.c < 1) return ECM_E_SHAPE;
    count = (int64_t)d.n * d.h;
    if (count > INT32_MAX || (count *= d.w) > INT32_MAX || (count *= d.c) > INT32_MAX) return ECM_E_RANGE;
    return ECM_OK;
}

static ecm_status ecm_check_quant(const ecm_quant *q, int32_t channels) {
    int32_t i;
    if (q == NULL || q->multiplier == NULL || q->shift == NULL) return ECM_E_ARG;
    if (q->count != 1 && q->count != channels) return ECM_E_SHAPE;
    for (i = 0; i < q->count; i++) ECM_TRY(ecm_check_multiplier(q->multiplier[i], q->shift[i]));
    return ECM_OK;
}

/* Output length of a window sweep; -1 when the window does not fit the padded input. */
static int64_t ecm_out_len(int32_t size, int32_t kernel, int32_t stride, int32_t dilation, int32_t pad0,
                           int32_t pad1) {
    const int64_t span = (int64_t)size + pad0 + pad1 - (int64_t)dilation * (kernel - 1) - 1;
    return span < 0 ? -1 : span / stride + 1;
}

/* ---------------------------------------------------------------- convolution */

static ecm_status ecm_check_conv(const ecm_conv_params *p, const ecm_quant *q, ecm_dims in, ecm_dims wd,
                                 ecm_dims out) {
    if (p == NULL) return ECM_E_ARG;
    ECM_TRY(ecm_check_dims(in));
    ECM_TRY(ecm_check_dims(wd));
    ECM_TRY(ecm_check_dims(out));
    if (p->stride_h < 1 || p->stride_w < 1 || p->dilation_h < 1 || p->dilation_w < 1 || p->groups < 1 ||
        p->pad_top < 0 || p->pad_left < 0 || p->pad_bottom < 0 || p->pad_right < 0)
        return ECM_E_ARG;
    if (!ecm_is_int8(p->input_zp) || !ecm_is_int8(p->output_zp)) return ECM_E_ARG;
    ECM_TRY(ecm_check_act(p->act_min, p->act_max));
    if ((int64_t)wd.c * p->groups != in.c || wd.n % p->groups != 0 || out.c != wd.n || out.n != in.n)
        return ECM_E_SHAPE;
    if ((int64_t)wd.h * wd.w * wd.c > ECM_MAX_PATCH) return ECM_E_RANGE;
    if (ecm_out_len(in.h, wd.h, p->stride_h, p->dilation_h, p->pad_top, p->pad_bottom) != out.h ||
        ecm_out_len(in.w, wd.w, p->stride_w, p->dilation_w, p->pad_left, p->pad_right) != out.w)
        return ECM_E_SHAPE;
    return ecm_check_quant(q, out.c);
}

ecm_status ecm_conv2d(const ecm_conv_params *p, const ecm_quant *q, ecm_dims in_dims, const int8_t *in,
                      ecm_dims w_dims, const int8_t *weights, const int32_t *bias, ecm_dims out_dims,
                      int8_t *out) {
    const int32_t cpg = w_dims.c; /* input channels per group */
    int32_t b, oy, ox, o, ky, kx, ci, opg;
    int8_t *dst = out;
    if (in == NULL || weights == NULL || out == NULL) return ECM_E_ARG;
    ECM_TRY(ecm_check_conv(p, q, in_dims, w_dims, out_dims));
#if ECM_FAST /* DSP / NEON paths (ecm_kernels_fast.c); 0: this case runs the loop below */
    if (ecm_conv2d_fast(p, q, in_dims, in, w_dims, weights, bias, out_dims, out)) return ECM_OK;
#endif
    opg = out_dims.c / p->groups;
    for (b = 0; b < out_dims.n; b++) {
        const int8_t *img = in + (size_t)b * in_dims.h * in_dims.w * in_dims.c;
        for (oy = 0; oy < out_dims.h; oy++) {
            const int32_t y0 = oy * p->stride_h - p->pad_top;
            for (ox = 0; ox < out_dims.w; ox++) {
                const int32_t x0 = ox * p->stride_w - p->pad_left;
                for (o = 0; o < out_dims.c; o++) {
                    const int8_t *w = weights + (size_t)o * w_dims.h * w_dims.w * cpg;
                    const int32_t c0 = (o / opg) * cpg; /* first input channel of o's group */
                    const int32_t qi = q->count == 1 ? 0 : o;
                    int32_t acc = 0;
                    int64_t sum;
                    /* |acc| <= ECM_MAX_PATCH * 255 * 128 < 2^31: no overflow (ecm_check_conv). */
                    for (ky = 0; ky < w_dims.h; ky++) {
                        const int32_t iy = y0 + ky * p->dilation_h;
                        if (iy < 0 || iy >= in_dims.h) continue; /* padding: x == zp, adds 0 */
                        for (kx = 0; kx < w_dims.w; kx++) {
                            const int32_t ix = x0 + kx * p->dilation_w;
                            const int8_t *src, *wk;
                            if (ix < 0 || ix >= in_dims.w) continue;
                            src = img + ((size_t)iy * in_dims.w + ix) * in_dims.c + c0;
                            wk = w + ((size_t)ky * w_dims.w + kx) * cpg;
                            for (ci = 0; ci < cpg; ci++) acc += ((int32_t)src[ci] - p->input_zp) * wk[ci];
                        }
                    }
                    sum = (int64_t)acc + (bias != NULL ? bias[o] : 0);
                    sum = sum > INT32_MAX ? INT32_MAX : (sum < INT32_MIN ? INT32_MIN : sum);
                    *dst++ = ecm_clamp((int64_t)ecm_requantize((int32_t)sum, q->multiplier[qi], q->shift[qi]) + p->output_zp,
                                       p->act_min, p->act_max);
                }
            }
        }
    }
    return ECM_OK;
}

/* ---------------------------------------------------------------- fully connected */

/* The checks both fully connected kernels make (pointers checked by each). */
static ecm_status ecm_check_fc(const ecm_fc_params *p, const ecm_quant *q, int32_t batches, int32_t in_features,
                               int32_t out_features) {
    const ecm_dims din = {batches, 1, 1, in_features}, dout = {batches, 1, 1, out_features};
    const ecm_dims dw = {out_features, 1, 1, in_features};
    ECM_TRY(ecm_check_dims(din));
    ECM_TRY(ecm_check_dims(dout));
    ECM_TRY(ecm_check_dims(dw));
    if (!ecm_is_int8(p->input_zp) || !ecm_is_int8(p->output_zp)) return ECM_E_ARG;
    ECM_TRY(ecm_check_act(p->act_min, p->act_max));
    if (in_features > ECM_MAX_PATCH) return ECM_E_RANGE;
    return ecm_check_quant(q, out_features);
}

/* Output byte of channel o from its sum: + bias (saturated to int32), requantized, clamped. */
static int8_t ecm_fc_out(const ecm_fc_params *p, const ecm_quant *q, const int32_t *bias, int32_t o, int32_t acc) {
    const int32_t qi = q->count == 1 ? 0 : o;
    int64_t sum = (int64_t)acc + (bias != NULL ? bias[o] : 0);
    sum = sum > INT32_MAX ? INT32_MAX : (sum < INT32_MIN ? INT32_MIN : sum);
    return ecm_clamp((int64_t)ecm_requantize((int32_t)sum, q->multiplier[qi], q->shift[qi]) + p->output_zp, p->act_min,
                     p->act_max);
}

ecm_status ecm_fully_connected(const ecm_fc_params *p, const ecm_quant *q, int32_t batches, int32_t in_features,
                               int32_t out_features, const int8_t *in, const int8_t *weights,
                               const int32_t *bias, int8_t *out) {
    int32_t b, o, i;
    if (p == NULL || in == NULL || weights == NULL || out == NULL) return ECM_E_ARG;
    ECM_TRY(ecm_check_fc(p, q, batches, in_features, out_features));
#if ECM_FAST
    if (ecm_fully_connected_fast(p, q, batches, in_features, out_features, in, weights, bias, out)) return ECM_OK;
#endif
    for (b = 0; b < batches; b++) {
        const int8_t *x = in + (size_t)b * in_features;
        for (o = 0; o < out_features; o++) {
            const int8_t *w = weights + (size_t)o * in_features;
            int32_t acc = 0; /* |acc| < ECM_MAX_PATCH * 255 * 128 < 2^31 */
            for (i = 0; i < in_features; i++) acc += ((int32_t)x[i] - p->input_zp) * w[i];
            out[(size_t)b * out_features + o] = ecm_fc_out(p, q, bias, o, acc);
        }
    }
    return ECM_OK;
}

ecm_status ecm_fully_connected_lut(const ecm_fc_params *p, const ecm_quant *q, int32_t batches, int32_t in_features,
                                   int32_t out_features, const int8_t *in, const uint8_t *packed, int32_t bits,
                                   const int8_t *book, int32_t levels, const int32_t *bias, int8_t *out) {
    const uint32_t mask = ((uint32_t)1 << bits) - 1u;
    int32_t b, o, i, v;
    if (p == NULL || in == NULL || packed == NULL || book == NULL || out == NULL) return ECM_E_ARG;
    if ((bits != 1 && bits != 2 && bits != 4) || levels < 1 || levels > (1 << bits)) return ECM_E_ARG;
    ECM_TRY(ecm_check_fc(p, q, batches, in_features, out_features));
    for (b = 0; b < batches; b++) {
        const int8_t *x = in + (size_t)b * in_features;
        for (o = 0; o < out_features; o++) {
            /* Sum the inputs by level, then weigh the (at most 16) sums by the levels: one add a
             * weight instead of a multiply, the same int32 total (|each partial| < 2^31 as the
             * plain sum's). A level past `levels` (corrupt flash) reads as 0 and is never used. */
            int32_t bins[16] = {0};
            int32_t acc = 0;
            size_t j = (size_t)o * in_features;
            if (bits == 4 && (in_features & 1) == 0) { /* rows start on a byte: two levels a byte */
                const uint8_t *pw = packed + j / 2;
                const int32_t zp = p->input_zp;
                for (i = 0; i < in_features; i += 2, pw++) {
                    bins[*pw & 15u] += (int32_t)x[i] - zp;
                    bins[*pw >> 4] += (int32_t)x[i + 1] - zp;
                }
            } else {
                for (i = 0; i < in_features; i++, j++)
                    bins[(packed[j * bits >> 3] >> ((j * bits) & 7u)) & mask] += (int32_t)x[i] - p->input_zp;
            }
            for (v = 0; v < levels; v++) acc += bins[v] * book[v];
            out[(size_t)b * out_features + o] = ecm_fc_out(p, q, bias, o, acc);
        }
    }
    return ECM_OK;
}

/* ---------------------------------------------------------------- add */

/* ecm_add tabulates its inputs' terms from this many elements on (measured on Cortex-M4: ResNet-8's
 * residual adds from ~200 to ~60 emulated instructions an element). */
#define ECM_ADD_TABLE_MIN 512

ecm_status ecm_add(const ecm_add_params *p, size_t count, const int8_t *a, const int8_t *b, int8_t *out) {
    size_t i;
    if (p == NULL || a == NULL || b == NULL || out == NULL) return ECM_E_ARG;
    if (!ecm_is_int8(p->a_zp) || !ecm_is_int8(p->b_zp) || !ecm_is_int8(p->output_zp)) return ECM_E_ARG;
    if (p->left_shift < 0 || p->left_shift > ECM_ADD_LEFT_SHIFT || p->a_shift > 0 || p->b_shift > 0) return ECM_E_ARG;
    ECM_TRY(ecm_check_multiplier(p->a_multiplier, p->a_shift));
    ECM_TRY(ecm_check_multiplier(p->b_multiplier, p->b_shift));
    ECM_TRY(ecm_check_multiplier(p->output_multiplier, p->output_shift));
    ECM_TRY(ecm_check_act(p->act_min, p->act_max));
    if (count >= ECM_ADD_TABLE_MIN) {
        /* Each input's scaled term depends on its int8 value alone: tabulate the 256 values once
         * (the same ecm_requantize results), then one requantization per element instead of three.
         * 2 KiB of stack; out may alias a or b (each element is read before it is written). */
        int32_t ta[256], tb[256];
        int32_t v;
        for (v = -128; v < 128; v++) {
            ta[v + 128] = ecm_requantize((v - p->a_zp) * (1 << p->left_shift), p->a_multiplier, p->a_shift);
            tb[v + 128] = ecm_requantize((v - p->b_zp) * (1 << p->left_shift), p->b_multiplier, p->b_shift);
        }
        if (p->output_shift <= -1) {
            /* ecm_requantize with shift = -(e1 + 1) in one multiply-add and one shift (the derivation
             * is at ecmf_scale_below_half in ecm_kernels_fast.c): with h = 2^e1 and s = -1 for a
             * negative sum, out = floor((x m + 2^30 + (h + s) 2^31) / 2^(32 + e1)). */
            const int32_t e1 = -p->output_shift - 1, h = (int32_t)1 << e1;
            for (i = 0; i < count; i++) {
                const int32_t x = ta[a[i] + 128] + tb[b[i] + 128];
                const int64_t t = (int64_t)h + (x < 0 ? -1 : 0);
                const int64_t q = (int64_t)x * p->output_multiplier + t * ((int64_t)1 << 31) + ((int64_t)1 << 30);
                out[i] = ecm_clamp((int64_t)((int32_t)(q >> 32) >> e1) + p->output_zp, p->act_min, p->act_max);
            }
            return ECM_OK;
        }
        for (i = 0; i < count; i++)
            out[i] = ecm_clamp((int64_t)ecm_requantize(ta[a[i] + 128] + tb[b[i] + 128], p->output_multiplier,
                                                       p->output_shift) + p->output_zp, p->act_min, p->act_max);
        return ECM_OK;
    }
    for (i = 0; i < count; i++) {
        /* |x - zp| <= 255, << 20 < 2^28; multipliers < 1 keep each term there: the sum fits int32. */
        const int32_t sa = ecm_requantize(((int32_t)a[i] - p->a_zp) * (1 << p->left_shift), p->a_multiplier, p->a_shift);
        const int32_t sb = ecm_requantize(((int32_t)b[i] - p->b_zp) * (1 << p->left_shift), p->b_multiplier, p->b_shift);
        out[i] = ecm_clamp((int64_t)ecm_requantize(sa + sb, p->output_multiplier, p->output_shift) + p->output_zp, p->act_min,
                           p->act_max);
    }
    return ECM_OK;
}

/* ---------------------------------------------------------------- pooling and mean */

static ecm_status ecm_check_pool(const ecm_pool_params *p, ecm_dims in, const int8_t *src, ecm_dims out,
                                 const int8_t *dst) {
    if (p == NULL || src == NULL || dst == NULL) return ECM_E_ARG;
    ECM_TRY(ecm_check_dims(in));
    ECM_TRY(ecm_check_dims(out));
    if (p->kernel_h < 1 || p->kernel_w < 1 || p->stride_h < 1 || p->stride_w < 1) return ECM_E_ARG;
    if (p->pad_top < 0 || p->pad_bottom < 0 || p->pad_left < 0 || p->pad_right < 0 || p->pad_top >= p->kernel_h ||
        p->pad_bottom >= p->kernel_h || p->pad_left >= p->kernel_w || p->pad_right >= p->kernel_w)
        return ECM_E_ARG; /* a window of padding only would have no element (avg: count 0) */
    if ((int64_t)p->kernel_h * p->kernel_w > ECM_MAX_PATCH) return ECM_E_RANGE;
    ECM_TRY(ecm_check_act(p->act_min, p->act_max));
    if (out.n != in.n || out.c != in.c ||
        ecm_out_len(in.h, p->kernel_h, p->stride_h, 1, p->pad_top, p->pad_bottom) != out.h ||
        ecm_out_len(in.w, p->kernel_w, p->stride_w, 1, p->pad_left, p->pad_right) != out.w)
        return ECM_E_SHAPE;
    return ECM_OK;
}

/* Shared loop of max and average pooling: is_max selects the reduction. */
static void ecm_pool(const ecm_pool_params *p, ecm_dims in, const int8_t *src, ecm_dims out, int8_t *dst,
                     int is_max) {
    int32_t b, oy, ox, c, y, x;
    for (b = 0; b < out.n; b++)
        for (oy = 0; oy < out.h; oy++) {
            /* In-bounds window rows [y0, y1): padding < kernel leaves at least one. */
            const int32_t ys = oy * p->stride_h - p->pad_top;
            const int32_t y0 = ys < 0 ? 0 : ys, y1 = ys + p->kernel_h > in.h ? in.h : ys + p->kernel_h;
            for (ox = 0; ox < out.w; ox++) {
                const int32_t xs = ox * p->stride_w - p->pad_left;
                const int32_t x0 = xs < 0 ? 0 : xs, x1 = xs + p->kernel_w > in.w ? in.w : xs + p->kernel_w;
                for (c = 0; c < out.c; c++) {
                    int32_t acc = is_max ? -128 : 0; /* |sum| <= ECM_MAX_PATCH * 128 */
                    for (y = y0; y < y1; y++)
                        for (x = x0; x < x1; x++) {
                            const int32_t v = src[(((size_t)b * in.h + y) * in.w + x) * in.c + c];
                            if (is_max)
                                acc = v > acc ? v : acc;
                            else
                                acc += v;
                        }
                    if (!is_max) acc = ecm_round_div(acc, (int64_t)(y1 - y0) * (x1 - x0));
                    *dst++ = ecm_clamp(acc, p->act_min, p->act_max);
                }
            }
        }
}

ecm_status ecm_max_pool2d(const ecm_pool_params *p, ecm_dims in_dims, const int8_t *in, ecm_dims out_dims,
                          int8_t *out) {
    ECM_TRY(ecm_check_pool(p, in_dims, in, out_dims, out));
    ecm_pool(p, in_dims, in, out_dims, out, 1);
    return ECM_OK;
}

ecm_status ecm_avg_pool2d(const ecm_pool_params *p, ecm_dims in_dims, const int8_t *in, ecm_dims out_dims,
                          int8_t *out) {
    ECM_TRY(ecm_check_pool(p, in_dims, in, out_dims, out));
    ecm_pool(p, in_dims, in, out_dims, out, 0);
    return ECM_OK;
}

ecm_status ecm_mean_hw(const ecm_mean_params *p, ecm_dims in_dims, const int8_t *in, int8_t *out) {
    int32_t b, c, i;
    int32_t window;
    if (p == NULL || in == NULL || out == NULL) return ECM_E_ARG;
    ECM_TRY(ecm_check_dims(in_dims));
    if (!ecm_is_int8(p->input_zp) || !ecm_is_int8(p->output_zp)) return ECM_E_ARG;
    ECM_TRY(ecm_check_multiplier(p->multiplier, p->shift));
    if (p->divide != 0 && p->divide != 1) return ECM_E_ARG;
    if ((int64_t)in_dims.h * in_dims.w > ECM_MAX_MEAN_WINDOW) return ECM_E_RANGE;
    window = in_dims.h * in_dims.w;
    for (b = 0; b < in_dims.n; b++)
        for (c = 0; c < in_dims.c; c++) {
            const int8_t *src = in + (size_t)b * window * in_dims.c + c;
            int32_t acc = 0; /* |acc| <= ECM_MAX_MEAN_WINDOW * 255 < 2^31 */
            for (i = 0; i < window; i++) acc += (int32_t)src[(size_t)i * in_dims.c] - p->input_zp;
            acc = ecm_requantize(acc, p->multiplier, p->shift);
            out[(size_t)b * in_dims.c + c] =
                ecm_clamp((int64_t)(p->divide ? ecm_round_div(acc, window) : acc) + p->output_zp, -128, 127);
        }
    return ECM_OK;
}

/* ---------------------------------------------------------------- data movement */

ecm_status ecm_clip(size_t count, const int8_t *in, int32_t lo, int32_t hi, int8_t *out) {
    size_t i;
    if (in == NULL || out == NULL) return ECM_E_ARG;
    ECM_TRY(ecm_check_act(lo, hi));
    for (i = 0; i < count; i++) out[i] = ecm_clamp(in[i], lo, hi);
    return ECM_OK;
}

ecm_status ecm_pad(const ecm_pad_params *p, ecm_dims in_dims, const int8_t *in, int8_t *out) {
    int32_t b, y, x, c;
    int32_t oh, ow;
    if (p == NULL || in == NULL || out == NULL) return ECM_E_ARG;
    if (p->top < 0 || p->left < 0 || p->bottom < 0 || p->right < 0 || !ecm_is_int8(p->value)) return ECM_E_ARG;
    ECM_TRY(ecm_check_dims(in_dims));
    if ((int64_t)in_dims.h + p->top + p->bottom > INT32_MAX || (int64_t)in_dims.w + p->left + p->right > INT32_MAX)
        return ECM_E_RANGE;
    oh = in_dims.h + p->top + p->bottom;
    ow = in_dims.w + p->left + p->right;
    {
        ecm_dims od;
        od.n = in_dims.n, od.h = oh, od.w = ow, od.c = in_dims.c;
        ECM_TRY(ecm_check_dims(od));
    }
    for (b = 0; b < in_dims.n; b++)
        for (y = 0; y < oh; y++)
            for (x = 0; x < ow; x++) {
                int8_t *dst = out + (((size_t)b * oh + y) * ow + x) * in_dims.c;
                const int32_t iy = y - p->top, ix = x - p->left;
                if (iy < 0 || iy >= in_dims.h || ix < 0 || ix >= in_dims.w) {
                    for (c = 0; c < in_dims.c; c++) dst[c] = (int8_t)p->value;
                } else {
                    const int8_t *src = in + (((size_t)b * in_dims.h + iy) * in_dims.w + ix) * in_dims.c;
                    for (c = 0; c < in_dims.c; c++) dst[c] = src[c];
                }
            }
    return ECM_OK;
}

ecm_status ecm_transpose(int32_t ndim, const int32_t *shape, const int32_t *perm, const int8_t *in, int8_t *out) {
    int32_t k, seen = 0;
    int64_t count = 1;
    size_t in_stride[ECM_MAX_DIMS], stride[ECM_MAX_DIMS]; /* stride[k]: input step of output dim k */
    int32_t oshape[ECM_MAX_DIMS], idx[ECM_MAX_DIMS];
    size_t i, n, src;
    if (shape == NULL || perm == NULL || in == NULL || out == NULL || ndim < 1 || ndim > ECM_MAX_DIMS)
        return ECM_E_ARG;
    for (k = ndim - 1; k >= 0; k--) {
        if (shape[k] < 1) return ECM_E_SHAPE;
        in_stride[k] = (size_t)count;
        count *= shape[k];
        if (count > INT32_MAX) return ECM_E_RANGE;
    }
    for (k = 0; k < ndim; k++) {
        if (perm[k] < 0 || perm[k] >= ndim || (seen >> perm[k]) & 1) return ECM_E_ARG; /* a permutation */
        seen |= 1 << perm[k];
        oshape[k] = shape[perm[k]];
        stride[k] = in_stride[perm[k]];
        idx[k] = 0;
    }
    /* Walk the output in order, carrying the multi-index like an odometer; src tracks its input offset. */
    n = (size_t)count;
    src = 0;
    for (i = 0; i < n; i++) {
        out[i] = in[src];
        for (k = ndim - 1; k >= 0; k--) {
            src += stride[k];
            if (++idx[k] < oshape[k]) break;
            src -= stride[k] * (size_t)oshape[k];
            idx[k] = 0;
        }
    }
    return ECM_OK;
}

/* ================================================================ sequence, attention, MobileNet-style
 * Element-wise kernels with broadcasting, lookup tables, batched matmul of two activations, and
 * row kernels (softmax, layer norm, mean, slice). */

/* ---------------------------------------------------------------- broadcasting */

/* Checks s; *count = elements of the output (<= INT32_MAX). */
static ecm_status ecm_check_bcast(const ecm_bcast *s, size_t *count) {
    int32_t k;
    int64_t n = 1;
    if (s == NULL || s->ndim < 1 || s->ndim > ECM_MAX_DIMS) return ECM_E_ARG;
    for (k = 0; k < s->ndim; k++) {
        if (s->out[k] < 1) return ECM_E_SHAPE;
        if ((s->a[k] != s->out[k] && s->a[k] != 1) || (s->b[k] != s->out[k] && s->b[k] != 1)) return ECM_E_SHAPE;
        n *= s->out[k];
        if (n > INT32_MAX) return ECM_E_RANGE;
    }
    *count = (size_t)n;
    return ECM_OK;
}

/* Element strides of a contiguous tensor of `shape` along the output's axes: 0 where it repeats. */
static void ecm_bcast_strides(int32_t ndim, const int32_t *shape, size_t *stride) {
    size_t step = 1;
    int32_t k;
    for (k = ndim - 1; k >= 0; k--) {
        stride[k] = shape[k] == 1 ? 0 : step;
        step *= (size_t)shape[k];
    }
}

/* Walks the output of s in order: offsets of a and b for each output element. */
typedef struct {
    size_t sa[ECM_MAX_DIMS], sb[ECM_MAX_DIMS];
    int32_t idx[ECM_MAX_DIMS];
    size_t ia, ib;
} ecm_bcast_walk;

static void ecm_bcast_start(const ecm_bcast *s, ecm_bcast_walk *w) {
    int32_t k;
    ecm_bcast_strides(s->ndim, s->a, w->sa);
    ecm_bcast_strides(s->ndim, s->b, w->sb);
    for (k = 0; k < s->ndim; k++) w->idx[k] = 0;
    w->ia = w->ib = 0;
}

/* Advances to the next output element (an odometer over the output's index; ia / ib stay below
 * the elements of a / b because every stride belongs to an axis of that operand). */
static void ecm_bcast_next(const ecm_bcast *s, ecm_bcast_walk *w) {
    int32_t k;
    for (k = s->ndim - 1; k >= 0; k--) {
        w->ia += w->sa[k];
        w->ib += w->sb[k];
        if (++w->idx[k] < s->out[k]) return;
        w->ia -= w->sa[k] * (size_t)s->out[k];
        w->ib -= w->sb[k] * (size_t)s->out[k];
        w->idx[k] = 0;
    }
}

static ecm_status ecm_check_add(const ecm_add_params *p) {
    if (p == NULL) return ECM_E_ARG;
    if (!ecm_is_int8(p->a_zp) || !ecm_is_int8(p->b_zp) || !ecm_is_int8(p->output_zp)) return ECM_E_ARG;
    if (p->left_shift < 0 || p->left_shift > ECM_ADD_LEFT_SHIFT || p->a_shift > 0 || p->b_shift > 0) return ECM_E_ARG;
    ECM_TRY(ecm_check_multiplier(p->a_multiplier, p->a_shift));
    ECM_TRY(ecm_check_multiplier(p->b_multiplier, p->b_shift));
    ECM_TRY(ecm_check_multiplier(p->output_multiplier, p->output_shift));
    return ecm_check_act(p->act_min, p->act_max);
}

ecm_status ecm_add_bcast(const ecm_add_params *p, int32_t subtract, const ecm_bcast *s, const int8_t *a,
                         const int8_t *b, int8_t *out) {
    size_t i, count = 0;
    ecm_bcast_walk w;
    if (a == NULL || b == NULL || out == NULL || (subtract != 0 && subtract != 1)) return ECM_E_ARG;
    ECM_TRY(ecm_check_add(p));
    ECM_TRY(ecm_check_bcast(s, &count));
    ecm_bcast_start(s, &w);
    for (i = 0; i < count; i++, ecm_bcast_next(s, &w)) {
        /* As ecm_add: each scaled term stays below 2^28, so the sum or difference fits int32. */
        const int32_t sa =
            ecm_requantize(((int32_t)a[w.ia] - p->a_zp) * (1 << p->left_shift), p->a_multiplier, p->a_shift);
        const int32_t sb =
            ecm_requantize(((int32_t)b[w.ib] - p->b_zp) * (1 << p->left_shift), p->b_multiplier, p->b_shift);
        const int32_t raw = subtract ? sa - sb : sa + sb;
        out[i] = ecm_clamp((int64_t)ecm_requantize(raw, p->output_multiplier, p->output_shift) + p->output_zp,
                           p->act_min, p->act_max);
    }
    return ECM_OK;
}

ecm_status ecm_mul(const ecm_mul_params *p, const ecm_bcast *s, const int8_t *a, const int8_t *b, int8_t *out) {
    size_t i, count = 0;
    ecm_bcast_walk w;
    if (p == NULL || a == NULL || b == NULL || out == NULL) return ECM_E_ARG;
    if (!ecm_is_int8(p->a_zp) || !ecm_is_int8(p->b_zp) || !ecm_is_int8(p->output_zp)) return ECM_E_ARG;
    ECM_TRY(ecm_check_multiplier(p->multiplier, p->shift));
    ECM_TRY(ecm_check_act(p->act_min, p->act_max));
    ECM_TRY(ecm_check_bcast(s, &count));
    ecm_bcast_start(s, &w);
    for (i = 0; i < count; i++, ecm_bcast_next(s, &w)) {
        const int32_t prod = ((int32_t)a[w.ia] - p->a_zp) * ((int32_t)b[w.ib] - p->b_zp); /* |.| <= 255^2 */
        out[i] = ecm_clamp((int64_t)ecm_requantize(prod, p->multiplier, p->shift) + p->output_zp, p->act_min,
                           p->act_max);
    }
    return ECM_OK;
}

/* ---------------------------------------------------------------- lookup tables, select */

ecm_status ecm_lut(size_t count, const int8_t *in, const int8_t *table, int8_t *out) {
    size_t i;
    if (in == NULL || table == NULL || out == NULL) return ECM_E_ARG;
    for (i = 0; i < count; i++) out[i] = table[(int32_t)in[i] + 128];
    return ECM_OK;
}

ecm_status ecm_select(size_t count, const int8_t *cond, int32_t if_true, int32_t if_false, int8_t *out) {
    size_t i;
    if (cond == NULL || out == NULL || !ecm_is_int8(if_true) || !ecm_is_int8(if_false)) return ECM_E_ARG;
    for (i = 0; i < count; i++) out[i] = (int8_t)(cond[i] != 0 ? if_true : if_false);
    return ECM_OK;
}

/* ---------------------------------------------------------------- batched matmul */

/* The largest offset the strides reach over the given extents (all >= 1, strides >= 0). */
static int64_t ecm_reach(const int32_t *stride, int32_t e0, int32_t e1, int32_t e2, int32_t e3) {
    return (int64_t)(e0 - 1) * stride[0] + (int64_t)(e1 - 1) * stride[1] + (int64_t)(e2 - 1) * stride[2] +
           (int64_t)(e3 - 1) * stride[3];
}

static ecm_status ecm_check_matmul(const ecm_matmul_params *p, const ecm_matmul_dims *d) {
    int32_t k;
    if (p == NULL || d == NULL) return ECM_E_ARG;
    if (!ecm_is_int8(p->a_zp) || !ecm_is_int8(p->b_zp) || !ecm_is_int8(p->output_zp)) return ECM_E_ARG;
    ECM_TRY(ecm_check_multiplier(p->multiplier, p->shift));
    ECM_TRY(ecm_check_act(p->act_min, p->act_max));
    if (d->batch[0] < 1 || d->batch[1] < 1 || d->m < 1 || d->k < 1 || d->n < 1) return ECM_E_SHAPE;
    if (d->k > ECM_MAX_ROW) return ECM_E_RANGE;
    for (k = 0; k < 4; k++)
        if (d->a_stride[k] < 0 || d->b_stride[k] < 0 || d->out_stride[k] < 0) return ECM_E_ARG;
    /* Every offset read or written is below its buffer's size. */
    if (ecm_reach(d->a_stride, d->batch[0], d->batch[1], d->m, d->k) >= d->a_size ||
        ecm_reach(d->b_stride, d->batch[0], d->batch[1], d->k, d->n) >= d->b_size ||
        ecm_reach(d->out_stride, d->batch[0], d->batch[1], d->m, d->n) >= d->out_size)
        return ECM_E_SHAPE;
    return ECM_OK;
}

ecm_status ecm_batch_matmul(const ecm_matmul_params *p, const ecm_matmul_dims *d, const int8_t *a, const int8_t *b,
                            int8_t *out) {
    int32_t b0, b1, i, j, k;
    if (a == NULL || b == NULL || out == NULL) return ECM_E_ARG;
    ECM_TRY(ecm_check_matmul(p, d));
    for (b0 = 0; b0 < d->batch[0]; b0++)
        for (b1 = 0; b1 < d->batch[1]; b1++) {
            const int8_t *ab = a + (size_t)b0 * d->a_stride[0] + (size_t)b1 * d->a_stride[1];
            const int8_t *bb = b + (size_t)b0 * d->b_stride[0] + (size_t)b1 * d->b_stride[1];
            int8_t *ob = out + (size_t)b0 * d->out_stride[0] + (size_t)b1 * d->out_stride[1];
            for (i = 0; i < d->m; i++)
                for (j = 0; j < d->n; j++) {
                    const int8_t *x = ab + (size_t)i * d->a_stride[2];
                    const int8_t *y = bb + (size_t)j * d->b_stride[3];
                    int32_t acc = 0; /* |acc| <= ECM_MAX_ROW * 255^2 < 2^31 */
                    for (k = 0; k < d->k; k++)
                        acc += ((int32_t)x[(size_t)k * d->a_stride[3]] - p->a_zp) *
                               ((int32_t)y[(size_t)k * d->b_stride[2]] - p->b_zp);
                    ob[(size_t)i * d->out_stride[2] + (size_t)j * d->out_stride[3]] =
                        ecm_clamp((int64_t)ecm_requantize(acc, p->multiplier, p->shift) + p->output_zp, p->act_min,
                                  p->act_max);
                }
        }
    return ECM_OK;
}

/* ---------------------------------------------------------------- row kernels */

static ecm_status ecm_check_rows(ecm_rows r) {
    int64_t n;
    if (r.outer < 1 || r.len < 1 || r.inner < 1) return ECM_E_SHAPE;
    n = (int64_t)r.outer * r.len;
    if (n > INT32_MAX || n * r.inner > INT32_MAX) return ECM_E_RANGE;
    return ECM_OK;
}

ecm_status ecm_softmax(ecm_rows r, const uint16_t *table, const int8_t *in, int8_t *out) {
    int32_t o, i, j;
    if (table == NULL || in == NULL || out == NULL) return ECM_E_ARG;
    ECM_TRY(ecm_check_rows(r));
    if (r.len > ECM_MAX_ROW) return ECM_E_RANGE;
    for (o = 0; o < r.outer; o++)
        for (i = 0; i < r.inner; i++) {
            const size_t base = (size_t)o * r.len * r.inner + (size_t)i;
            int32_t mx = -128;
            uint32_t sum = 0; /* <= ECM_MAX_ROW * 65535 < 2^31 */
            for (j = 0; j < r.len; j++) {
                const int32_t v = in[base + (size_t)j * r.inner];
                mx = v > mx ? v : mx;
            }
            for (j = 0; j < r.len; j++) sum += table[mx - in[base + (size_t)j * r.inner]];
            /* sum >= table[0]; 256 * e + sum / 2 < 2^24 + 2^30: no overflow in uint32. */
            for (j = 0; j < r.len; j++) {
                const size_t at = base + (size_t)j * r.inner;
                const uint32_t q = ((uint32_t)table[mx - in[at]] * 256u + sum / 2u) / sum;
                out[at] = ecm_clamp((int64_t)q - 128, -128, 127);
            }
        }
    return ECM_OK;
}

/* floor(sqrt(x)) for x < 2^62 (digit by digit, two bits a step). */
static uint32_t ecm_isqrt64(uint64_t x) {
    uint64_t r = 0, bit = (uint64_t)1 << 62;
    while (bit > x) bit >>= 2;
    while (bit != 0) {
        if (x >= r + bit) {
            x -= r + bit;
            r = (r >> 1) + bit;
        } else {
            r >>= 1;
        }
        bit >>= 2;
    }
    return (uint32_t)r;
}

/* x / 2^e rounded half away from zero, int64, e in [1, 62]. */
static int64_t ecm_rdbpot64(int64_t x, int32_t e) {
    const int64_t mask = ((int64_t)1 << e) - 1;
    const int64_t remainder = x & mask;
    const int64_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (remainder > threshold ? 1 : 0);
}

ecm_status ecm_layer_norm(const ecm_layer_norm_params *p, ecm_rows r, const int32_t *gamma, const int64_t *beta,
                          const int8_t *in, int8_t *out) {
    int32_t o, i, j;
    const int64_t beta_max = (int64_t)1 << 60;
    if (p == NULL || gamma == NULL || beta == NULL || in == NULL || out == NULL) return ECM_E_ARG;
    if (!ecm_is_int8(p->input_zp) || !ecm_is_int8(p->output_zp) || p->shift < 1 || p->shift > 62 || p->eps < 1 ||
        p->eps >= ((int64_t)1 << 61) || p->var_shift < 0 || p->var_shift > 20)
        return ECM_E_ARG;
    ECM_TRY(ecm_check_rows(r));
    if (r.len > ECM_MAX_ROW) return ECM_E_RANGE;
    /* The largest variance term, (len * 255)^2 * 4^var_shift, plus eps stays below 2^62. */
    if ((((uint64_t)r.len * r.len * 65025u) << (2 * p->var_shift)) >> (2 * p->var_shift) !=
            (uint64_t)r.len * r.len * 65025u ||
        (((uint64_t)r.len * r.len * 65025u) << (2 * p->var_shift)) + (uint64_t)p->eps >= ((uint64_t)1 << 62))
        return ECM_E_RANGE;
    for (j = 0; j < r.len; j++)
        if (beta[j] >= beta_max || beta[j] <= -beta_max) return ECM_E_ARG;
    for (o = 0; o < r.outer; o++)
        for (i = 0; i < r.inner; i++) {
            const size_t base = (size_t)o * r.len * r.inner + (size_t)i;
            int32_t sum = 0, sq = 0; /* |sum| <= 2^23, sq <= ECM_MAX_ROW * 255^2 < 2^31 */
            int64_t t;
            int32_t bits = 0, shift;
            uint32_t root;
            int64_t inv;
            for (j = 0; j < r.len; j++) {
                const int32_t d = (int32_t)in[base + (size_t)j * r.inner] - p->input_zp;
                sum += d;
                sq += d * d;
            }
            /* t = 4^k * len^2 * (variance + eps) in squared input steps: 1 <= t < 2^62 (checked above). */
            t = (int64_t)(((uint64_t)((int64_t)r.len * sq - (int64_t)sum * sum) << (2 * p->var_shift)) +
                          (uint64_t)p->eps);
            while (bits < 62 && (t >> bits) != 0) bits++;
            shift = (62 - bits) / 2; /* t << 2 * shift has 61 or 62 bits */
            root = ecm_isqrt64((uint64_t)t << (2 * shift)); /* sqrt(t) * 2^shift, in [2^30, 2^31) */
            inv = (int64_t)((((uint64_t)1 << 61) + root / 2u) / root); /* 2^61 / root, in (2^30, 2^31] */
            for (j = 0; j < r.len; j++) {
                const size_t at = base + (size_t)j * r.inner;
                const int32_t c = r.len * ((int32_t)in[at] - p->input_zp) - sum; /* |c| < 2^24 */
                /* z: (x - mean) / sqrt(var + eps) in Q15, |z| <= sqrt(len) * 2^15 < 2^23 */
                const int64_t z = ecm_rdbpot64((int64_t)c * inv, 46 - shift - p->var_shift);
                const int64_t acc = (int64_t)gamma[j] * z + beta[j]; /* < 2^54 + 2^60 */
                out[at] = ecm_clamp(ecm_rdbpot64(acc, p->shift) + p->output_zp, -128, 127);
            }
        }
    return ECM_OK;
}

ecm_status ecm_mean_rows(const ecm_mean_params *p, ecm_rows r, const int8_t *in, int8_t *out) {
    int32_t o, i, j;
    if (p == NULL || in == NULL || out == NULL) return ECM_E_ARG;
    if (!ecm_is_int8(p->input_zp) || !ecm_is_int8(p->output_zp) || (p->divide != 0 && p->divide != 1)) return ECM_E_ARG;
    ECM_TRY(ecm_check_multiplier(p->multiplier, p->shift));
    ECM_TRY(ecm_check_rows(r));
    if (r.len > ECM_MAX_MEAN_WINDOW) return ECM_E_RANGE;
    for (o = 0; o < r.outer; o++)
        for (i = 0; i < r.inner; i++) {
            const int8_t *src = in + (size_t)o * r.len * r.inner + (size_t)i;
            int32_t acc = 0; /* |acc| <= ECM_MAX_MEAN_WINDOW * 255 < 2^31 */
            for (j = 0; j < r.len; j++) acc += (int32_t)src[(size_t)j * r.inner] - p->input_zp;
            acc = ecm_requantize(acc, p->multiplier, p->shift);
            out[(size_t)o * r.inner + i] =
                ecm_clamp((int64_t)(p->divide ? ecm_round_div(acc, r.len) : acc) + p->output_zp, -128, 127);
        }
    return ECM_OK;
}

ecm_status ecm_slice(ecm_rows r, int32_t start, int32_t step, int32_t out_len, const int8_t *in, int8_t *out) {
    int32_t o, i, c;
    if (in == NULL || out == NULL || start < 0 || step < 1 || out_len < 1) return ECM_E_ARG;
    ECM_TRY(ecm_check_rows(r));
    if ((int64_t)start + (int64_t)(out_len - 1) * step >= r.len) return ECM_E_SHAPE;
    for (o = 0; o < r.outer; o++)
        for (i = 0; i < out_len; i++) {
            const int8_t *src = in + ((size_t)o * r.len + (size_t)start + (size_t)i * step) * r.inner;
            int8_t *dst = out + ((size_t)o * out_len + i) * r.inner;
            for (c = 0; c < r.inner; c++) dst[c] = src[c];
        }
    return ECM_OK;
}

ecm_status ecm_take(ecm_rows r, const int32_t *idx, int32_t n_idx, const int8_t *in, int8_t *out) {
    int32_t o, k, c;
    if (in == NULL || out == NULL || idx == NULL || n_idx < 1) return ECM_E_ARG;
    ECM_TRY(ecm_check_rows(r));
    for (k = 0; k < n_idx; k++)
        if (idx[k] < 0 || idx[k] >= r.len) return ECM_E_SHAPE;
    for (o = 0; o < r.outer; o++)
        for (k = 0; k < n_idx; k++) {
            const int8_t *src = in + ((size_t)o * r.len + (size_t)idx[k]) * r.inner;
            int8_t *dst = out + ((size_t)o * n_idx + k) * r.inner;
            for (c = 0; c < r.inner; c++) dst[c] = src[c];
        }
    return ECM_OK;
}

ecm_status ecm_concat_part(int32_t outer, int32_t part, int32_t total, int32_t offset, const int8_t *in, int8_t *out) {
    int32_t o, c;
    if (in == NULL || out == NULL || outer < 1 || part < 1 || offset < 0) return ECM_E_ARG;
    if ((int64_t)offset + part > total || (int64_t)outer * total > INT32_MAX) return ECM_E_SHAPE;
    for (o = 0; o < outer; o++) {
        const int8_t *src = in + (size_t)o * part;
        int8_t *dst = out + (size_t)o * total + offset;
        for (c = 0; c < part; c++) dst[c] = src[c];
    }
    return ECM_OK;
}

/* ---------------------------------------------------------------- masks and token ids */

ecm_status ecm_where(const ecm_bcast *s, const int8_t *cond, const int8_t *x, int32_t if_true, int32_t if_false,
                     int8_t *out) {
    size_t i, count = 0;
    ecm_bcast_walk w;
    const int take_t = if_true == ECM_WHERE_X, take_f = if_false == ECM_WHERE_X;
    if (cond == NULL || out == NULL || ((take_t || take_f) && x == NULL)) return ECM_E_ARG;
    if ((!take_t && !ecm_is_int8(if_true)) || (!take_f && !ecm_is_int8(if_false))) return ECM_E_ARG;
    ECM_TRY(ecm_check_bcast(s, &count));
    ecm_bcast_start(s, &w);
    for (i = 0; i < count; i++, ecm_bcast_next(s, &w)) {
        const int t = cond[w.ia] != 0;
        const int use_x = t ? take_t : take_f;
        out[i] = use_x ? x[w.ib] : (int8_t)(t ? if_true : if_false);
    }
    return ECM_OK;
}

/* A little-endian int32 from 4 bytes at any address. */
static int32_t ecm_le32(const int8_t *p) {
    const uint8_t *b = (const uint8_t *)p;
    return (int32_t)((uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24));
}

ecm_status ecm_gather_rows(size_t count, const int8_t *ids, int32_t vocab, int32_t row, const int8_t *table,
                           int8_t *out) {
    size_t i;
    int32_t c;
    if (ids == NULL || table == NULL || out == NULL || vocab < 1 || row < 1) return ECM_E_ARG;
    if ((int64_t)vocab * row > INT32_MAX || count > (size_t)INT32_MAX / (size_t)row) return ECM_E_RANGE;
    for (i = 0; i < count; i++) {
        const int32_t id = ecm_le32(ids + 4 * i);
        if (id < 0 || id >= vocab) return ECM_E_RANGE; /* every id checked before any write */
    }
    for (i = 0; i < count; i++) {
        const int8_t *src = table + (size_t)ecm_le32(ids + 4 * i) * (size_t)row;
        for (c = 0; c < row; c++) out[i * (size_t)row + (size_t)c] = src[c];
    }
    return ECM_OK;
}

ecm_status ecm_equal_const(size_t count, const int8_t *in, int32_t width, int32_t value, int8_t *out) {
    size_t i;
    if (in == NULL || out == NULL || (width != 1 && width != 4)) return ECM_E_ARG;
    for (i = 0; i < count; i++) out[i] = (int8_t)((width == 1 ? (int32_t)in[i] : ecm_le32(in + 4 * i)) == value);
    return ECM_OK;
}
