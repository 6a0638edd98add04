/* ecm_fast_neon.h - the block kernels of ecm_kernels_fast.c for AArch64 (Advanced SIMD);
 * included by ecm_kernels_fast.c only.
 *
 * Without the dot product extension, eight MACs a step in int16 x int16 -> int32: VSUBL widens
 * x - zp exactly ([-255, 255]), VMOVL widens the weights, VMLAL / VMLAL2 multiply-accumulate four
 * lanes each. With __ARM_FEATURE_DOTPROD (Armv8.2+: Cortex-A55, A76, ...), SDOT does sixteen
 * int8 x int8 MACs into four int32 lanes; x - zp does not fit int8, so SDOT sums x * w and, with
 * a vector of ones, the weights; sum((x - zp) * w) = sum(x * w) - zp * sum(w) over the same taps,
 * each term within int32 (|x * w| <= 2^14, |zp * w| <= 2^14 per element, ECM_MAX_PATCH elements).
 *
 * Dense convolution walks the output pixels in order and pairs consecutive ones whose windows
 * (the taps inside the input) are the same; a pair, or a lone pixel, runs 4 output channels at a
 * time over the window's runs of contiguous bytes. Depthwise: 8 channels of a pixel a step, the
 * weights of the 8 widened to int16 and transposed once onto the stack. */
#ifndef ECM_FAST_NEON_H
#define ECM_FAST_NEON_H

#define ECMF_DW_MAX_TAPS 64 /* depthwise kernels up to 8x8 (1 KiB of stack); larger: portable */

/* s[j] += (x - zp) * w_j over 8 bytes, both halves; xz: x - zp widened. */
#define ECMF_MLAL8(s, xz, wp)                                     \
    do {                                                          \
        const int16x8_t w16_ = vmovl_s8(vld1_s8(wp));             \
        (s) = vmlal_s16((s), vget_low_s16(xz), vget_low_s16(w16_)); \
        (s) = vmlal_high_s16((s), (xz), w16_);                    \
    } while (0)

/* The blocks: n_px pixels (1 or 2) x 4 channels. Sums of x * w by SDOT (dp: x * w, dw: w) where
 * available, then widened int16 MACs (sv), then bytes one at a time (t). */
static inline void ecmf_block(const ecmf_patch *pt, int n_px, const int8_t *x0, const int8_t *x1,
                              const int8_t *const *w, int32_t zp, int32_t *acc) {
    const int8x8_t vzp = vdup_n_s8((int8_t)zp);
    int32x4_t sv[8];
    int32_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int32_t r, c, j, k;
#if defined(__ARM_FEATURE_DOTPROD)
    const int8x16_t ones = vdupq_n_s8(1);
    int32x4_t dp[8], dw[4];
    for (j = 0; j < 8; j++) dp[j] = vdupq_n_s32(0);
    for (j = 0; j < 4; j++) dw[j] = vdupq_n_s32(0);
#endif
    for (j = 0; j < 8; j++) sv[j] = vdupq_n_s32(0);
    for (r = 0; r < pt->rows; r++)
        for (c = 0; c < pt->cols; c++) {
            const ptrdiff_t xo = (ptrdiff_t)r * pt->x_row + (ptrdiff_t)c * pt->x_col;
            const ptrdiff_t wo = (ptrdiff_t)r * pt->w_row + (ptrdiff_t)c * pt->w_col;
            const int8_t *a = x0 + xo, *b = x1 + xo;
            const int8_t *w0 = w[0] + wo, *w1 = w[1] + wo, *w2 = w[2] + wo, *w3 = w[3] + wo;
            k = 0;
#if defined(__ARM_FEATURE_DOTPROD)
            for (; k + 16 <= pt->len; k += 16) {
                const int8x16_t va = vld1q_s8(a + k), u0 = vld1q_s8(w0 + k), u1 = vld1q_s8(w1 + k);
                const int8x16_t u2 = vld1q_s8(w2 + k), u3 = vld1q_s8(w3 + k);
                dp[0] = vdotq_s32(dp[0], va, u0), dp[1] = vdotq_s32(dp[1], va, u1);
                dp[2] = vdotq_s32(dp[2], va, u2), dp[3] = vdotq_s32(dp[3], va, u3);
                dw[0] = vdotq_s32(dw[0], ones, u0), dw[1] = vdotq_s32(dw[1], ones, u1);
                dw[2] = vdotq_s32(dw[2], ones, u2), dw[3] = vdotq_s32(dw[3], ones, u3);
                if (n_px == 2) {
                    const int8x16_t vb = vld1q_s8(b + k);
                    dp[4] = vdotq_s32(dp[4], vb, u0), dp[5] = vdotq_s32(dp[5], vb, u1);
                    dp[6] = vdotq_s32(dp[6], vb, u2), dp[7] = vdotq_s32(dp[7], vb, u3);
                }
            }
#endif
            for (; k + 8 <= pt->len; k += 8) {
                const int16x8_t xa = vsubl_s8(vld1_s8(a + k), vzp);
                ECMF_MLAL8(sv[0], xa, w0 + k);
                ECMF_MLAL8(sv[1], xa, w1 + k);
                ECMF_MLAL8(sv[2], xa, w2 + k);
                ECMF_MLAL8(sv[3], xa, w3 + k);
                if (n_px == 2) {
                    const int16x8_t xb = vsubl_s8(vld1_s8(b + k), vzp);
                    ECMF_MLAL8(sv[4], xb, w0 + k);
                    ECMF_MLAL8(sv[5], xb, w1 + k);
                    ECMF_MLAL8(sv[6], xb, w2 + k);
                    ECMF_MLAL8(sv[7], xb, w3 + k);
                }
            }
            for (; k < pt->len; k++) {
                const int32_t xa = a[k] - zp;
                t[0] += xa * w0[k], t[1] += xa * w1[k], t[2] += xa * w2[k], t[3] += xa * w3[k];
                if (n_px == 2) {
                    const int32_t xb = b[k] - zp;
                    t[4] += xb * w0[k], t[5] += xb * w1[k], t[6] += xb * w2[k], t[7] += xb * w3[k];
                }
            }
        }
    for (j = 0; j < 4 * n_px; j++) {
        acc[j] = vaddvq_s32(sv[j]) + t[j];
#if defined(__ARM_FEATURE_DOTPROD)
        acc[j] += vaddvq_s32(dp[j]) - zp * vaddvq_s32(dw[j & 3]);
#endif
    }
}

/* y[j] = the output byte of sum acc[j] for channels c + j, j < n: four at a time in vectors,
 * exactly as ecm_requantize: VQSHL the saturating left shift, VQRDMULH the doubling high multiply
 * (it saturates only for INT32_MIN^2; multipliers are >= 0), then the rounding right shift as
 * gemmlowp does it: x - 1 for x < 0 (saturating) and VRSHL, which rounds half up, together round
 * half away from zero. The zero point is added saturating, so that the clamp sees the true sign. */
static void ecmf_store_n(const ecmf_out *o, const int32_t *acc, int32_t c, int32_t n, int8_t *y) {
    if (n == 4) {
        const int32x4_t m = o->q_step ? vld1q_s32(o->mult + c) : vdupq_n_s32(o->mult[0]);
        const int32x4_t sh = o->q_step ? vld1q_s32(o->shift + c) : vdupq_n_s32(o->shift[0]);
        const int32x4_t right = vminq_s32(sh, vdupq_n_s32(0));
        int32x4_t x = vld1q_s32(acc);
        int8x8_t b8;
        uint32_t bytes;
        if (o->bias != NULL) x = vqaddq_s32(x, vld1q_s32(o->bias + c));
        x = vqrdmulhq_s32(vqshlq_s32(x, vmaxq_s32(sh, vdupq_n_s32(0))), m);
        x = vrshlq_s32(vqaddq_s32(x, vshrq_n_s32(vandq_s32(x, right), 31)), right);
        x = vqaddq_s32(x, vdupq_n_s32(o->out_zp));
        x = vminq_s32(vmaxq_s32(x, vdupq_n_s32(o->lo + o->out_zp)), vdupq_n_s32(o->hi + o->out_zp));
        b8 = vmovn_s16(vcombine_s16(vmovn_s32(x), vmovn_s32(x)));
        bytes = vget_lane_u32(vreinterpret_u32_s8(b8), 0);
        memcpy(y, &bytes, 4);
        return;
    }
    ecmf_store(o, acc, 1, c, n, y, NULL);
}

/* One output pixel: its window's taps [ky0, ky1) x [kx0, kx1), where its input starts (channel
 * c0 of the first tap inside) and where its output goes. */
typedef struct {
    int32_t ky0, ky1, kx0, kx1;
    const int8_t *x;
    int8_t *y;
} ecmf_pixel;

static void ecmf_locate(const ecmf_conv *cv, int32_t b, int32_t oy, int32_t ox, int32_t c0, ecmf_pixel *px) {
    const ecm_conv_params *p = cv->p;
    const int32_t ys = oy * p->stride_h - p->pad_top, xs = ox * p->stride_w - p->pad_left;
    const int8_t *img = cv->in_data + (size_t)b * cv->in.h * cv->in.w * cv->in.c;
    ecmf_taps(ys, cv->w.h, p->dilation_h, cv->in.h, &px->ky0, &px->ky1);
    ecmf_taps(xs, cv->w.w, p->dilation_w, cv->in.w, &px->kx0, &px->kx1);
    px->x = img + c0;
    if (px->ky0 < px->ky1 && px->kx0 < px->kx1)
        px->x += ((size_t)(ys + px->ky0 * p->dilation_h) * cv->in.w + (size_t)(xs + px->kx0 * p->dilation_w)) * cv->in.c;
    px->y = cv->out_data + (((size_t)b * cv->out.h + oy) * cv->out.w + ox) * cv->out.c;
}

/* The runs of px's window; *w_off: the weight offset of its first tap. taps != 0 (depthwise):
 * one tap a run, weights counted in taps. */
static void ecmf_window(const ecmf_conv *cv, const ecmf_pixel *px, int taps, ecmf_patch *pt, int32_t *w_off) {
    const ecm_conv_params *p = cv->p;
    const int32_t c = cv->in.c, wc = taps ? 1 : c; /* input / weight bytes a tap */
    pt->rows = px->ky1 - px->ky0;
    pt->x_row = p->dilation_h * cv->in.w * c, pt->w_row = cv->w.w * wc;
    pt->x_col = p->dilation_w * c, pt->w_col = wc;
    *w_off = (px->ky0 * cv->w.w + px->kx0) * wc;
    if (!taps && p->dilation_w == 1) { /* a row of the window is one run */
        pt->cols = 1, pt->len = (px->kx1 - px->kx0) * c;
        if (pt->len == pt->x_row && pt->len == pt->w_row) /* and so is the whole window */
            pt->len *= pt->rows, pt->rows = 1;
    } else {
        pt->cols = px->kx1 - px->kx0, pt->len = taps ? 1 : c;
    }
    if (pt->cols == 0) pt->rows = 0;
}

/* Every output channel of pixels a and b (b == NULL: a alone), which have the same window. */
static void ecmf_dense_pixels(const ecmf_conv *cv, const ecmf_pixel *a, const ecmf_pixel *b) {
    const int32_t zp = cv->p->input_zp, oc = cv->out.c;
    ecmf_patch pt;
    int32_t w_off, o, j;
    ecmf_window(cv, a, 0, &pt, &w_off);
    for (o = 0; o < oc; o += 4) {
        const int32_t n = oc - o < 4 ? oc - o : 4;
        const int8_t *w[4];
        int32_t acc[8];
        for (j = 0; j < 4; j++) w[j] = cv->weights + (size_t)(o + (j < n ? j : n - 1)) * cv->patch + w_off;
        ecmf_block(&pt, b != NULL ? 2 : 1, a->x, b != NULL ? b->x : a->x, w, zp, acc);
        ecmf_store_n(&cv->o, acc, o, n, a->y + o);
        if (b != NULL) ecmf_store_n(&cv->o, acc + 4, o, n, b->y + o);
    }
}

static int ecmf_dense(const ecmf_conv *cv) {
    ecmf_pixel pend, cur;
    int have = 0;
    int32_t b, oy, ox;
    for (b = 0; b < cv->out.n; b++)
        for (oy = 0; oy < cv->out.h; oy++)
            for (ox = 0; ox < cv->out.w; ox++) {
                ecmf_locate(cv, b, oy, ox, 0, &cur);
                if (have && cur.ky0 == pend.ky0 && cur.ky1 == pend.ky1 && cur.kx0 == pend.kx0 && cur.kx1 == pend.kx1) {
                    ecmf_dense_pixels(cv, &pend, &cur);
                    have = 0;
                } else {
                    if (have) ecmf_dense_pixels(cv, &pend, NULL);
                    pend = cur, have = 1;
                }
            }
    if (have) ecmf_dense_pixels(cv, &pend, NULL);
    return 1;
}

/* ---------------------------------------------------------------- depthwise */

/* acc[j] = sum over the window of (x_j - zp) * w_j, channels c..c+7; x: channel c at the window's
 * first tap, packed: that tap's 8 weights (pt: w_row / w_col count taps). */
static void ecmf_dw_block(const ecmf_patch *pt, const int8_t *x, const int16_t *packed, int32_t zp, int32_t *acc) {
    const int8x8_t vzp = vdup_n_s8((int8_t)zp);
    int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);
    int32_t r, c;
    for (r = pt->rows; r > 0; r--, x += pt->x_row, packed += 8 * pt->w_row) {
        const int8_t *xp = x;
        const int16_t *wp = packed;
        for (c = pt->cols; c > 0; c--, xp += pt->x_col, wp += 8 * pt->w_col) {
            const int16x8_t xz = vsubl_s8(vld1_s8(xp), vzp), wv = vld1q_s16(wp);
            lo = vmlal_s16(lo, vget_low_s16(xz), vget_low_s16(wv));
            hi = vmlal_high_s16(hi, xz, wv);
        }
    }
    vst1q_s32(acc, lo);
    vst1q_s32(acc + 4, hi);
}

static int ecmf_depthwise(const ecmf_conv *cv) {
    const int32_t taps = cv->w.h * cv->w.w, ch = cv->in.c, zp = cv->p->input_zp;
    int16_t packed[8 * ECMF_DW_MAX_TAPS];
    int32_t c, b, oy, ox, t, j;
    if (taps > ECMF_DW_MAX_TAPS) return 0;
    for (c = 0; c < ch; c += 8) {
        const int32_t n = ch - c < 8 ? ch - c : 8;
        const int8_t *w = cv->weights + (size_t)c * taps;
        if (n == 8)
            for (t = 0; t < taps; t++)
                for (j = 0; j < 8; j++) packed[8 * t + j] = w[(ptrdiff_t)j * taps + t];
        for (b = 0; b < cv->out.n; b++)
            for (oy = 0; oy < cv->out.h; oy++)
                for (ox = 0; ox < cv->out.w; ox++) {
                    ecmf_pixel px;
                    ecmf_patch pt;
                    int32_t tap0, acc[8];
                    ecmf_locate(cv, b, oy, ox, c, &px);
                    ecmf_window(cv, &px, 1, &pt, &tap0);
                    if (n == 8)
                        ecmf_dw_block(&pt, px.x, packed + 8 * tap0, zp, acc);
                    else
                        ecmf_dw_tail(&pt, px.x, w + tap0, taps, n, zp, acc);
                    ecmf_store_n(&cv->o, acc, c, n < 4 ? n : 4, px.y + c);
                    if (n > 4) ecmf_store_n(&cv->o, acc + 4, c + 4, n - 4, px.y + c + 4);
                }
    }
    return 1;
}

#endif /* ECM_FAST_NEON_H */
