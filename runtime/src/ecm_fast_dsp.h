/* ecm_fast_dsp.h - the loops of ecm_kernels_fast.c for Armv7E-M / Armv8-M with the DSP
 * extension (Cortex-M4, M7, M33); included by ecm_kernels_fast.c only.
 *
 * Four MACs in two instructions: SXTB16 sign-extends bytes 0 and 2 of a word into two halfwords
 * (with ROR #8: bytes 1 and 3), SXTAB16 also adds two halfwords, SMLAD multiplies two halfword
 * pairs and adds both products to an int32. A word of inputs x0..x3 and one of weights w0..w3
 * give (x0 - zp, x2 - zp).(w0, w2) + (x1 - zp, x3 - zp).(w1, w3); SXTAB16 with (-zp, -zp) does
 * the input offset (x - zp is in [-255, 255]: a halfword).
 *
 * Dense convolution (and fully connected): two output pixels' patches, padding as zeros, are
 * written once as such halfword pairs to a stack buffer (im2col), then every pair of output
 * channels runs over them: per 4 patch elements 2 LDRD (the pixels), 2 LDR + 4 SXTB16 (the two
 * channels' weights), 8 SMLAD. A lone pixel (an odd count, fully connected of one batch) runs 4
 * channels: 1 LDRD + 4 x (LDR + 2 SXTB16 + 2 SMLAD). Patches longer than ECM_FAST_CHUNK are
 * done in pieces, the sums of ECMF_GROUP channels kept on the stack in between.
 * Depthwise: 4 channels of a pixel a step, their weights transposed once onto the stack as
 * halfword pairs (w_c0, w_c2), (w_c1, w_c3) per tap; per tap LDR + 2 SXTAB16, LDRD, 2 SMLABB +
 * 2 SMLATT. Word loads of activations and weights are unaligned LDRs (allowed for LDR on
 * Armv7-M, not for LDRD / LDM, which only read the stack buffers). */
#ifndef ECM_FAST_DSP_H
#define ECM_FAST_DSP_H

#ifndef ECM_FAST_CHUNK
#define ECM_FAST_CHUNK 256 /* patch elements of two pixels buffered at a time: 1 KiB of stack */
#endif
#define ECMF_GROUP 16      /* channels whose sums wait on the stack between pieces of a long patch;
                            * at most ECMF_RQ_MAX */
#define ECMF_DW_MAX_TAPS 25 /* depthwise kernels up to 5x5 (200 bytes of stack); larger: portable */

#if ECM_FAST_CHUNK < 16 || ECM_FAST_CHUNK % 16 != 0
#error "ECM_FAST_CHUNK must be a multiple of 16"
#endif

/* The loops of ecm_kernels_dsp.c (Thumb-2 assembly); elsewhere their C twins below. */
#if defined(__ARM_FEATURE_DSP) && defined(__thumb2__)
#define ECMF_DSP_ASM 1
#else
#define ECMF_DSP_ASM 0
#endif

#if defined(__ARM_FEATURE_DSP)
static inline int32_t ecmf_sxtb16(uint32_t v) { return __sxtb16((int32_t)v); }
static inline int32_t ecmf_sxtb16_ror8(uint32_t v) {
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
static inline int32_t ecmf_sxtab16(int32_t a, uint32_t v) { return __sxtab16(a, (int32_t)v); }
static inline int32_t ecmf_sxtab16_ror8(int32_t a, uint32_t v) {
    int32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(v));
    return r;
}
static inline int32_t ecmf_smlad(int32_t a, int32_t b, int32_t acc) { return __smlad(a, b, acc); }
static inline int32_t ecmf_smlabb(int32_t a, int32_t b, int32_t acc) { return __smlabb(a, b, acc); }
static inline int32_t ecmf_smlatt(int32_t a, int32_t b, int32_t acc) { return __smlatt(a, b, acc); }

#else /* ECM_FAST_EMULATE_DSP on a host: the same instructions in C (wrapping like the hardware) */

static inline int32_t ecmf_lo16(int32_t v) { return (int32_t)(int16_t)(uint16_t)((uint32_t)v & 0xFFFFu); }
static inline int32_t ecmf_hi16(int32_t v) { return (int32_t)(int16_t)(uint16_t)((uint32_t)v >> 16); }
static inline int32_t ecmf_sxtab16(int32_t a, uint32_t v) {
    const uint32_t lo = (uint32_t)(ecmf_lo16(a) + (int8_t)(uint8_t)(v & 0xFFu)) & 0xFFFFu;
    const uint32_t hi = (uint32_t)(ecmf_hi16(a) + (int8_t)(uint8_t)((v >> 16) & 0xFFu)) & 0xFFFFu;
    return (int32_t)(lo | (hi << 16));
}
static inline int32_t ecmf_sxtab16_ror8(int32_t a, uint32_t v) { return ecmf_sxtab16(a, (v >> 8) | (v << 24)); }
static inline int32_t ecmf_sxtb16(uint32_t v) { return ecmf_sxtab16(0, v); }
static inline int32_t ecmf_sxtb16_ror8(uint32_t v) { return ecmf_sxtab16_ror8(0, v); }
static inline int32_t ecmf_smlad(int32_t a, int32_t b, int32_t acc) {
    return (int32_t)((uint32_t)acc + (uint32_t)(ecmf_lo16(a) * ecmf_lo16(b)) + (uint32_t)(ecmf_hi16(a) * ecmf_hi16(b)));
}
static inline int32_t ecmf_smlabb(int32_t a, int32_t b, int32_t acc) {
    return (int32_t)((uint32_t)acc + (uint32_t)(ecmf_lo16(a) * ecmf_lo16(b)));
}
static inline int32_t ecmf_smlatt(int32_t a, int32_t b, int32_t acc) {
    return (int32_t)((uint32_t)acc + (uint32_t)(ecmf_hi16(a) * ecmf_hi16(b)));
}
#endif

/* Four bytes from any address (an unaligned LDR on the M4; memcpy is how C says it). */
static inline uint32_t ecmf_ld32(const int8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The first n < 4 bytes at p as the low bytes of a word, the rest 0. */
static inline uint32_t ecmf_ld_tail(const int8_t *p, int32_t n) {
    uint32_t v = 0;
    while (n-- > 0) v = (v << 8) | (uint8_t)p[n];
    return v;
}

/* (-zp, -zp) as two halfwords: the SXTAB16 addend that subtracts the input zero point. */
static inline int32_t ecmf_neg_zp2(int32_t zp) { return (int32_t)(((uint32_t)-zp & 0xFFFFu) * 0x10001u); }

/* ---------------------------------------------------------------- requantization */

/* ecm_dsp_requant's arguments: per channel {mult, e = -shift, h = 2^(e-1), bias}, and the act
 * range minus the output zero point. Only where every shift <= -1 (ecmf_out.below_half). */
typedef struct {
    const int32_t *ch;
    int32_t lo, hi, zp;
    int32_t npix, y_step; /* pixels of n channels each (y_pair == 0), the next one's y y_step on */
    int32_t full;         /* the act range is [-128, 127] */
} ecmf_rq_args;

#define ECMF_RQ_MAX 16 /* channels of one ecmf_rq_prep */

static void ecmf_rq_prep(const ecmf_out *o, int32_t c0, int32_t n, int32_t *ch, ecmf_rq_args *a) {
    const int32_t qs = o->q_step, *m = o->mult + c0 * qs, *sh = o->shift + c0 * qs;
    const int32_t *b = o->bias != NULL ? o->bias + c0 : NULL;
    const int32_t *end = ch + 4 * n;
    for (; ch < end; ch += 4, m += qs, sh += qs) {
        const int32_t e = -*sh;
        ch[0] = *m, ch[1] = e, ch[2] = (int32_t)1 << (e - 1), ch[3] = b != NULL ? *b++ : 0;
    }
    a->lo = o->lo, a->hi = o->hi, a->zp = o->out_zp, a->npix = 1, a->y_step = 0;
    a->full = o->lo + o->out_zp == -128 && o->hi + o->out_zp == 127;
}

#if ECMF_DSP_ASM
void ecm_dsp_requant(const int32_t *acc, int8_t *y, ptrdiff_t y_pair, int32_t n, const ecmf_rq_args *a);
#define ECMF_REQUANT ecm_dsp_requant
#else
/* See ecm_dsp_requant in ecm_kernels_dsp.c. */
static void ecmf_requant_c(const int32_t *acc, int8_t *y, ptrdiff_t y_pair, int32_t n, const ecmf_rq_args *a) {
    int32_t px, j, p, r;
    for (px = 0; px < a->npix; px++, y += a->y_step, acc += n) {
        const int32_t *ch = a->ch;
        for (j = 0; j < n; j++, ch += 4)
            for (p = 0; p < (y_pair != 0 ? 2 : 1); p++) {
                r = ecmf_scale_below_half(ecmf_qadd(acc[y_pair != 0 ? 2 * j + p : j], ch[3]), ch[0], ch[2], ch[1] - 1);
                y[j + p * y_pair] = (int8_t)((r < a->lo ? a->lo : (r > a->hi ? a->hi : r)) + a->zp);
            }
    }
}
#define ECMF_REQUANT ecmf_requant_c
#endif

/* ---------------------------------------------------------------- dense: im2col */

/* Where one pixel's patch comes from: image, first tap's coordinates. */
typedef struct {
    const int8_t *img;
    int32_t ys, xs;
    int8_t *y;
} ecmf_src;

static void ecmf_src_at(const ecmf_conv *cv, int32_t pixel, ecmf_src *s) {
    const int32_t per_image = cv->out.h * cv->out.w, b = pixel / per_image, r = pixel % per_image;
    s->img = cv->in_data + (size_t)b * cv->in.h * cv->in.w * cv->in.c;
    s->ys = (r / cv->out.w) * cv->p->stride_h - cv->p->pad_top;
    s->xs = (r % cv->out.w) * cv->p->stride_w - cv->p->pad_left;
    s->y = cv->out_data + (size_t)pixel * cv->out.c;
}

/* Where converted bytes go: groups of 4 as two words (x - zp halfword pairs in SXTB16 order) at
 * dst[0], dst[1], then dst += step; nb < 4 bytes wait in `word` (runs that start inside a group:
 * in_c % 4 != 0). */
typedef struct {
    int32_t *dst;
    int32_t step, nzp, nb, zp;
    uint32_t word;
} ecmf_sink;

/* len bytes from src, or len bytes of value zp (x - zp == 0) when src == NULL (padding). */
static void ecmf_sink_bytes(ecmf_sink *k, const int8_t *src, int32_t len) {
    const int32_t step = k->step, nzp = k->nzp;
    int32_t *d = k->dst, g;
    if (k->nb == 0 && src == NULL) { /* whole groups of padding */
        for (g = len >> 2; g > 0; g--, d += step) d[0] = 0, d[1] = 0;
        len &= 3;
    } else if (k->nb == 0) { /* whole groups */
        for (g = len >> 2; g > 0; g--, d += step, src += 4) {
            const uint32_t v = ecmf_ld32(src);
            d[0] = ecmf_sxtab16(nzp, v), d[1] = ecmf_sxtab16_ror8(nzp, v);
        }
        len &= 3;
    } else if (src != NULL) { /* words shifted in after the nb bytes waiting */
        const int32_t sh = 8 * k->nb;
        for (g = len >> 2; g > 0; g--, d += step, src += 4) {
            const uint32_t v = ecmf_ld32(src), w = k->word | (v << sh);
            d[0] = ecmf_sxtab16(nzp, w), d[1] = ecmf_sxtab16_ror8(nzp, w);
            k->word = v >> (32 - sh);
        }
        len &= 3;
    }
    for (; len > 0; len--) { /* bytes: the rest, or padding after a partial group */
        k->word |= (uint32_t)(uint8_t)(src != NULL ? *src++ : (int8_t)k->zp) << (8 * k->nb);
        if (++k->nb == 4) {
            d[0] = ecmf_sxtab16(nzp, (uint32_t)k->word), d[1] = ecmf_sxtab16_ror8(nzp, k->word);
            d += step, k->word = 0, k->nb = 0;
        }
    }
    k->dst = d;
}

static int32_t ecmf_clampi(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* Patch elements [k0, k0 + n) of pixel s, converted into dst / step (ecmf_sink); padding is 0
 * (x == zp), and so are the elements past n in the last group. k0 is a multiple of 4. With
 * dilation_w == 1 a kernel row is kw * in_c contiguous bytes: the columns left of the input, those
 * inside, those right of it. */
static void ecmf_im2col(const ecmf_conv *cv, const ecmf_src *s, int32_t k0, int32_t n, int32_t *dst, int32_t step) {
    const ecm_conv_params *p = cv->p;
    const int32_t c = cv->in.c, kw = cv->w.w;
    int32_t k = 0;
    ecmf_sink sink;
    sink.dst = dst, sink.step = step, sink.nzp = ecmf_neg_zp2(p->input_zp), sink.nb = 0, sink.zp = p->input_zp;
    sink.word = 0;
    if (p->dilation_w == 1 && k0 == 0 && n == cv->patch && s->ys >= 0 && s->xs >= 0 &&
        s->ys + (cv->w.h - 1) * p->dilation_h < cv->in.h && s->xs + kw <= cv->in.w) { /* the whole window inside */
        const int8_t *src = s->img + ((size_t)s->ys * cv->in.w + (size_t)s->xs) * c;
        int32_t ky;
        for (ky = 0; ky < cv->w.h; ky++, src += (ptrdiff_t)p->dilation_h * cv->in.w * c) ecmf_sink_bytes(&sink, src, kw * c);
    } else if (p->dilation_w == 1) {
        const int32_t row = kw * c;
        const int32_t lp = ecmf_clampi(-s->xs, 0, kw) * c, rx = ecmf_clampi(cv->in.w - s->xs, 0, kw) * c;
        const int32_t rp = rx < lp ? lp : rx; /* the row's bytes [lp, rp) are inside the input */
        int32_t ky = k0 / row, off = k0 % row;
        for (; k < n; ky++, off = 0) {
            const int32_t iy = s->ys + ky * p->dilation_h, end = row - off < n - k ? row : off + n - k;
            const int32_t a = end < lp ? end : lp, b0 = off > lp ? off : lp, b1 = end < rp ? end : rp;
            const int32_t c0 = off > rp ? off : rp;
            if (a > off) ecmf_sink_bytes(&sink, NULL, a - off);
            if (b1 > b0) /* s->xs * c + b0 >= 0: b0 >= lp */
                ecmf_sink_bytes(&sink, iy >= 0 && iy < cv->in.h ? s->img + ((ptrdiff_t)iy * cv->in.w + s->xs) * c + b0 : NULL,
                                b1 - b0);
            if (end > c0) ecmf_sink_bytes(&sink, NULL, end - c0);
            k += end - off;
        }
    } else { /* dilated columns: a run of in_c bytes a tap */
        int32_t tap = k0 / c, ci = k0 % c;
        for (; k < n; tap++, ci = 0) {
            const int32_t iy = s->ys + (tap / kw) * p->dilation_h, ix = s->xs + (tap % kw) * p->dilation_w;
            const int32_t run = c - ci < n - k ? c - ci : n - k;
            const int inside = iy >= 0 && iy < cv->in.h && ix >= 0 && ix < cv->in.w;
            ecmf_sink_bytes(&sink, inside ? s->img + ((size_t)iy * cv->in.w + (size_t)ix) * c + ci : NULL, run);
            k += run;
        }
    }
    if (sink.nb > 0) ecmf_sink_bytes(&sink, NULL, 4 - sink.nb); /* the last group's missing bytes */
}

/* ---- the MAC loops: ecm_kernels_dsp.c on the device, these C twins on a host (and for the odd
 * channels at the end of a block). x is the im2col buffer; weights are read a word at a time, so
 * that a channel's last partial group reads the first bytes of the next channel's weights (times
 * x == 0 past the patch: nothing added); only the last channel's last partial group, where that
 * would read past the weights, takes ecmf_tail. */

#if ECMF_DSP_ASM
void ecm_dsp_pairs(const int32_t *x, const int8_t *w, int32_t groups, ptrdiff_t dw, int32_t *acc, int32_t pairs,
                   ptrdiff_t pair_step, int32_t zero);
void ecm_dsp_quads(const int32_t *x, const int8_t *w, int32_t groups, int32_t patch, int32_t *acc, int32_t quads,
                   int32_t zero);
#define ECMF_PAIRS ecm_dsp_pairs
#define ECMF_QUADS ecm_dsp_quads
#else
/* See ecm_dsp_pairs in ecm_kernels_dsp.c. */
static void ecmf_pairs_c(const int32_t *x, const int8_t *w, int32_t groups, ptrdiff_t dw, int32_t *acc, int32_t pairs,
                         ptrdiff_t pair_step, int32_t zero) {
    int32_t g;
    for (; pairs > 0; pairs--, w += pair_step, acc += 4) {
        const int32_t *xp = x;
        const int8_t *wp = w;
        if (zero) acc[0] = acc[1] = acc[2] = acc[3] = 0;
        for (g = groups; g > 0; g--, xp += 4, wp += 4) {
            uint32_t u = ecmf_ld32(wp);
            acc[0] = ecmf_smlad(xp[0], ecmf_sxtb16(u), ecmf_smlad(xp[1], ecmf_sxtb16_ror8(u), acc[0]));
            acc[1] = ecmf_smlad(xp[2], ecmf_sxtb16(u), ecmf_smlad(xp[3], ecmf_sxtb16_ror8(u), acc[1]));
            u = ecmf_ld32(wp + dw);
            acc[2] = ecmf_smlad(xp[0], ecmf_sxtb16(u), ecmf_smlad(xp[1], ecmf_sxtb16_ror8(u), acc[2]));
            acc[3] = ecmf_smlad(xp[2], ecmf_sxtb16(u), ecmf_smlad(xp[3], ecmf_sxtb16_ror8(u), acc[3]));
        }
    }
}

/* See ecm_dsp_quads in ecm_kernels_dsp.c. */
static void ecmf_quads_c(const int32_t *x, const int8_t *w, int32_t groups, int32_t patch, int32_t *acc, int32_t quads,
                         int32_t zero) {
    int32_t g, j;
    for (; quads > 0; quads--, w += 4 * (ptrdiff_t)patch, acc += 4)
        for (j = 0; j < 4; j++) {
            const int32_t *xp = x;
            const int8_t *wp = w + j * (ptrdiff_t)patch;
            if (zero) acc[j] = 0;
            for (g = groups; g > 0; g--, xp += 2, wp += 4) {
                const uint32_t u = ecmf_ld32(wp);
                acc[j] = ecmf_smlad(xp[0], ecmf_sxtb16(u), ecmf_smlad(xp[1], ecmf_sxtb16_ror8(u), acc[j]));
            }
        }
}

#define ECMF_PAIRS ecmf_pairs_c
#define ECMF_QUADS ecmf_quads_c
#endif

/* acc[p] += the sum of the last, partial group (t < 4 elements; its x words at xg, `step` words a
 * pixel, zero past t) for the channel whose weights of that group start at w, n_px pixels. */
static void ecmf_tail(const int32_t *xg, int32_t n_px, const int8_t *w, int32_t t, int32_t *acc, int32_t acc_step) {
    const uint32_t u = ecmf_ld_tail(w, t);
    int32_t px;
    for (px = 0; px < n_px; px++, acc += acc_step)
        *acc = ecmf_smlad(xg[2 * px], ecmf_sxtb16(u), ecmf_smlad(xg[2 * px + 1], ecmf_sxtb16_ror8(u), *acc));
}

/* Channels [o0, o1) of a pixel pair over patch elements [k0, k0 + n) from xb (4 words a group:
 * pixel 0's two, pixel 1's two): acc[(o - o0) * 2 + p] += sum (x_p - zp) * w_o. */
static void ecmf_mac_pairs(const ecmf_conv *cv, const int32_t *xb, int32_t o0, int32_t o1, int32_t k0, int32_t n,
                           int32_t *acc) {
    const int32_t zero = k0 == 0; /* the first piece of the patch sets the sums */
    const ptrdiff_t patch = cv->patch;
    const int32_t full = (n + 3) >> 2, whole = n >> 2, t = n & 3, oc = cv->out.c;
    const int8_t *w = cv->weights + o0 * patch + k0;
    int32_t o = o0, pairs = (o1 - o0) >> 1;
    if (o1 == oc && !((o1 - o0) & 1) && t != 0) pairs--; /* the pair ending the weights: below */
    if (pairs > 0) ECMF_PAIRS(xb, w, full, patch, acc, pairs, 2 * patch, zero);
    for (o += 2 * pairs, w += 2 * pairs * patch, acc += 4 * pairs; o < o1; o += 2, w += 2 * patch, acc += 4) {
        const ptrdiff_t dw = o + 1 < o1 ? patch : 0; /* a lone channel: twice, the copy in acc[2..3] */
        const int ends = o + (dw != 0) == oc - 1;
        ECMF_PAIRS(xb, w, ends ? whole : full, dw, acc, 1, 0, zero);
        if (ends && t != 0) {
            ecmf_tail(xb + 4 * whole, 2, w + 4 * whole, t, acc, 1);
            ecmf_tail(xb + 4 * whole, 2, w + dw + 4 * whole, t, acc + 2, 1);
        }
    }
}

/* Channels [o0, o1) of one pixel over patch elements [k0, k0 + n) from xb (2 words a group):
 * acc[o - o0] += sum (x - zp) * w_o. */
static void ecmf_mac_singles(const ecmf_conv *cv, const int32_t *xb, int32_t o0, int32_t o1, int32_t k0, int32_t n,
                             int32_t *acc) {
    const int32_t zero = k0 == 0;
    const ptrdiff_t patch = cv->patch;
    const int32_t full = (n + 3) >> 2, whole = n >> 2, t = n & 3, oc = cv->out.c;
    const int8_t *w = cv->weights + o0 * patch + k0;
    int32_t o, g, quads = (o1 - o0) >> 2;
    if (o1 == oc && !((o1 - o0) & 3) && t != 0) quads--; /* the quad ending the weights: below */
    if (quads > 0) ECMF_QUADS(xb, w, full, (int32_t)patch, acc, quads, zero);
    for (o = o0 + 4 * quads, w += 4 * quads * patch, acc += 4 * quads; o < o1; o++, w += patch, acc++) {
        const int ends = o == oc - 1;
        const int32_t *xp = xb;
        const int8_t *wp = w;
        if (zero) *acc = 0;
        for (g = ends ? whole : full; g > 0; g--, xp += 2, wp += 4) {
            const uint32_t u = ecmf_ld32(wp);
            *acc = ecmf_smlad(xp[0], ecmf_sxtb16(u), ecmf_smlad(xp[1], ecmf_sxtb16_ror8(u), *acc));
        }
        if (ends && t != 0) ecmf_tail(xp, 1, wp, t, acc, 1);
    }
}

/* Every output of pixels a and b (b == NULL: a alone). ra: the requantization of all channels,
 * prepared once for the layer (out_c <= ECMF_GROUP), or NULL. */
static ECMF_NOINLINE void ecmf_dense_pixels(const ecmf_conv *cv, const ecmf_src *a, const ecmf_src *b, int32_t *xb,
                                            const ecmf_rq_args *ra_all) {
    const int pair = b != NULL, step = pair ? 4 : 2;
    const int32_t chunk = pair ? ECM_FAST_CHUNK : 2 * ECM_FAST_CHUNK, oc = cv->out.c, patch = cv->patch;
    int32_t acc[2 * ECMF_GROUP + 2], o0, o1, k0, n; /* + the junk sums of a pair past o1 */
    for (o0 = 0; o0 < oc; o0 = o1) {
        o1 = oc - o0 < ECMF_GROUP ? oc : o0 + ECMF_GROUP;
        for (k0 = 0; k0 < patch; k0 += chunk) {
            n = patch - k0 < chunk ? patch - k0 : chunk;
            if (o0 == 0 || patch > chunk) { /* the buffer already holds it when the patch fits */
                ecmf_im2col(cv, a, k0, n, xb, step);
                if (pair) ecmf_im2col(cv, b, k0, n, xb + 2, step);
            }
            if (pair)
                ecmf_mac_pairs(cv, xb, o0, o1, k0, n, acc);
            else
                ecmf_mac_singles(cv, xb, o0, o1, k0, n, acc);
        }
        /* acc: (channel, pixel) pairs, or one sum a channel */
        if (ra_all != NULL) {
            ECMF_REQUANT(acc, a->y, pair ? b->y - a->y : 0, oc, ra_all);
        } else if (cv->o.below_half) {
            int32_t ch[4 * ECMF_RQ_MAX];
            ecmf_rq_args ra;
            ecmf_rq_prep(&cv->o, o0, o1 - o0, ch, &ra);
            ra.ch = ch;
            ECMF_REQUANT(acc, a->y + o0, pair ? b->y - a->y : 0, o1 - o0, &ra);
        } else {
            ecmf_store(&cv->o, acc, pair ? 2 : 1, o0, o1 - o0, a->y + o0, pair ? b->y + o0 : NULL);
        }
    }
}

static ECMF_NOINLINE int ecmf_dense(const ecmf_conv *cv) {
    int32_t xb[ECM_FAST_CHUNK]; /* a group of 4 elements: 4 words (2 pixels) or 2 (a lone pixel) */
    int32_t ch[4 * ECMF_RQ_MAX];
    const int32_t pixels = cv->out.n * cv->out.h * cv->out.w;
    ecmf_rq_args ra, *ra_all = NULL;
    int32_t i;
    if (cv->o.below_half && cv->out.c <= ECMF_GROUP) { /* one group: its requantization once */
        ecmf_rq_prep(&cv->o, 0, cv->out.c, ch, &ra);
        ra.ch = ch, ra_all = &ra;
    }
    for (i = 0; i + 1 < pixels; i += 2) {
        ecmf_src a, b;
        ecmf_src_at(cv, i, &a);
        ecmf_src_at(cv, i + 1, &b);
        ecmf_dense_pixels(cv, &a, &b, xb, ra_all);
    }
    if (i < pixels) {
        ecmf_src a;
        ecmf_src_at(cv, i, &a);
        ecmf_dense_pixels(cv, &a, NULL, xb, ra_all);
    }
    return 1;
}

/* ---------------------------------------------------------------- depthwise */

/* A depthwise window of 4 channels, for npix pixels x_pix bytes apart: rows x cols taps; the
 * input advances x_col bytes a tap and x_row a row, the packed weights 8 bytes a tap and
 * w_row_adj more a row. */
typedef struct {
    int32_t rows, cols, x_col, x_row, w_row_adj, nzp, npix, x_pix;
} ecmf_dw_args;

#define ECMF_DW_RUN 16 /* pixels of one ecm_dsp_dw call */

#if ECMF_DSP_ASM
void ecm_dsp_dw(const int8_t *x, const int32_t *wp, const ecmf_dw_args *a, int32_t *acc);
#define ECMF_DW ecm_dsp_dw
#else
/* See ecm_dsp_dw in ecm_kernels_dsp.c: acc[4p + j] = sum of (x_j - zp) * w_j, channels j < 4. */
static void ecmf_dw_c(const int8_t *x, const int32_t *wp, const ecmf_dw_args *a, int32_t *acc) {
    int32_t px, r, c;
    for (px = 0; px < a->npix; px++, x += a->x_pix, acc += 4) {
        const int8_t *xr = x;
        const int32_t *w = wp;
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (r = a->rows; r > 0; r--, xr += a->x_row, w += a->w_row_adj / 4)
            for (c = 0; c < a->cols; c++, w += 2) {
                const uint32_t t = ecmf_ld32(xr + c * a->x_col);
                const int32_t te = ecmf_sxtab16(a->nzp, t), to = ecmf_sxtab16_ror8(a->nzp, t);
                a0 = ecmf_smlabb(te, w[0], a0), a2 = ecmf_smlatt(te, w[0], a2);
                a1 = ecmf_smlabb(to, w[1], a1), a3 = ecmf_smlatt(to, w[1], a3);
            }
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
    }
}
#define ECMF_DW ecmf_dw_c
#endif

/* The output columns [*lo, *hi) whose windows lie wholly inside the input's width. */
static void ecmf_dw_interior(const ecmf_conv *cv, int32_t *lo, int32_t *hi) {
    const ecm_conv_params *p = cv->p;
    const int32_t span = p->dilation_w * (cv->w.w - 1);
    int32_t a = (p->pad_left + p->stride_w - 1) / p->stride_w; /* first with xs >= 0 */
    int32_t b = cv->in.w - 1 - span + p->pad_left;              /* xs + span <= in.w - 1 */
    b = b < 0 ? 0 : b / p->stride_w + 1;
    a = a > cv->out.w ? cv->out.w : a;
    b = b > cv->out.w ? cv->out.w : b;
    *lo = a, *hi = b < a ? a : b;
}

/* Channels c .. c + 3 of every output pixel: per row, runs of pixels with the same window go to
 * ecm_dsp_dw (the interior of a row is one run), their sums to ecm_dsp_requant ECMF_DW_RUN
 * pixels at a time. */
static ECMF_NOINLINE void ecmf_dw_block4(const ecmf_conv *cv, int32_t c, const int32_t *packed, ecmf_rq_args *ra) {
    const ecm_conv_params *p = cv->p;
    const int32_t kw = cv->w.w, ch = cv->in.c, oc = cv->out.c;
    int32_t acc[4 * ECMF_DW_RUN], b, oy, ox, lo, hi, ky0, ky1, kx0, kx1, np, held;
    ecmf_dw_args a;
    ecmf_dw_interior(cv, &lo, &hi);
    a.x_col = p->dilation_w * ch, a.x_row = p->dilation_h * cv->in.w * ch, a.x_pix = p->stride_w * ch;
    a.nzp = ecmf_neg_zp2(p->input_zp);
    for (b = 0; b < cv->out.n; b++)
        for (oy = 0; oy < cv->out.h; oy++) {
            const int32_t ys = oy * p->stride_h - p->pad_top;
            const int8_t *row = cv->in_data + (size_t)b * cv->in.h * cv->in.w * ch + c;
            int8_t *y = cv->out_data + (((size_t)b * cv->out.h + oy) * cv->out.w) * oc + c, *y0 = y;
            ecmf_taps(ys, cv->w.h, p->dilation_h, cv->in.h, &ky0, &ky1);
            if (ky1 > ky0) row += (size_t)(ys + ky0 * p->dilation_h) * cv->in.w * ch;
            for (ox = 0, held = 0; ox < cv->out.w; ox += np, y += np * oc) {
                const int32_t xs = ox * p->stride_w - p->pad_left;
                if (ox >= lo && ox < hi) {
                    kx0 = 0, kx1 = kw, np = hi - ox;
                } else {
                    ecmf_taps(xs, kw, p->dilation_w, cv->in.w, &kx0, &kx1);
                    np = 1;
                }
                if (np > ECMF_DW_RUN - held) np = ECMF_DW_RUN - held;
                a.cols = kx1 - kx0, a.rows = a.cols > 0 ? ky1 - ky0 : 0, a.w_row_adj = (kw - a.cols) * 8, a.npix = np;
                ECMF_DW(a.rows > 0 ? row + (ptrdiff_t)(xs + kx0 * p->dilation_w) * ch : row, packed + 2 * (ky0 * kw + kx0),
                        &a, acc + 4 * held);
                held += np;
                if (held == ECMF_DW_RUN || ox + np == cv->out.w) { /* the sums held: output bytes */
                    if (ra != NULL) {
                        ra->npix = held;
                        ECMF_REQUANT(acc, y0, 0, 4, ra);
                    } else {
                        for (kx0 = 0; kx0 < held; kx0++) ecmf_store(&cv->o, acc + 4 * kx0, 1, c, 4, y0 + kx0 * oc, NULL);
                    }
                    held = 0, y0 = y + np * oc;
                }
            }
        }
}

/* ---- 3x3 depthwise, dilation 1, stride_w 1 or 2: pixel pairs over zero-bordered rows.
 * Per 4-channel group the input rows a window needs are converted once into a ring of 3 row
 * buffers: a column is 2 words, (x0 - zp, x2 - zp) and (x1 - zp, x3 - zp), and columns outside the
 * input (padding) are 0, so that every window is whole and the inner loop has no edges. Two output
 * pixels run at once: with stride 1 they share two of their four input columns a row, so a row
 * of a pair is 4 (stride 2: 5) LDRD of inputs, 3 (6) LDRD of weights and 24 SMLAxy. */
#define ECMF_DW3_COLS 56 /* columns of a row buffer (3 x 56 x 8 bytes of stack); wider: ecmf_dw_block4 */

typedef struct {
    const int32_t *row[3]; /* column 0 of each kernel row's buffer */
    const int32_t *w;      /* 18 words: taps row-major, (w0, w2), (w1, w3) each */
    const int32_t *rq;     /* 4 channels x {mult, e, h + zp 2^e, 2 bias} (ecmf_dw3_rq) */
    int8_t *y;             /* pixel 0's 4 output bytes; pixel i's at y + i y_step */
    int32_t y_step, npix;  /* npix >= 1 */
} ecmf_dw3_args;

/* The requantization constants of the pair path for channels c .. c + 3, or 0 where its short
 * form would not be ecm_requantize's value: it needs every shift in [-22, -1] (then h + zp 2^e
 * and SMMLAR's result fit int32), |bias| < 2^30 - 9 * 255 * 128 (then 2 (sum + bias) fits int32
 * and no saturating add is needed) and the act range all of int8 (the clamp is SSAT). */
static int ecmf_dw3_rq(const ecmf_out *o, int32_t c, int32_t *rq) {
    int32_t j;
    if (o->lo + o->out_zp != -128 || o->hi + o->out_zp != 127) return 0;
    for (j = 0; j < 4; j++, rq += 4) {
        const int32_t m = o->mult[(c + j) * o->q_step], e = -o->shift[(c + j) * o->q_step];
        const int32_t bias = o->bias != NULL ? o->bias[c + j] : 0;
        if (e < 1 || e > 22 || bias >= (1 << 30) - 9 * 255 * 128 || bias <= -(1 << 30) + 9 * 255 * 128) return 0;
        rq[0] = m, rq[1] = e, rq[2] = (int32_t)(((int64_t)1 << (e - 1)) + (int64_t)o->out_zp * ((int64_t)1 << e));
        rq[3] = 2 * bias;
    }
    return 1;
}

#if ECMF_DSP_ASM
void ecm_dsp_dw3(const ecmf_dw3_args *a, int32_t stride2);
#define ECMF_DW3 ecm_dsp_dw3
#else
/* See ecm_dsp_dw3 in ecm_kernels_dsp.c: SMMLAR(2x, m, h + zp 2^e + s) >> e, saturated to int8. */
static void ecmf_dw3_c(const ecmf_dw3_args *a, int32_t stride2) {
    const int32_t s = stride2 ? 2 : 1;
    int32_t i, j, k, t;
    for (i = 0; i < a->npix; i++)
        for (j = 0; j < 4; j++) {
            const int32_t *rq = a->rq + 4 * j;
            int32_t acc = 0, x2, r;
            for (k = 0; k < 3; k++)
                for (t = 0; t < 3; t++) {
                    const int32_t *x = a->row[k] + 2 * (i * s + t) + (j & 1), *w = a->w + 2 * (3 * k + t) + (j & 1);
                    acc = j < 2 ? ecmf_smlabb(*x, *w, acc) : ecmf_smlatt(*x, *w, acc);
                }
            x2 = rq[3] + 2 * acc;
            r = (int32_t)(((int64_t)(rq[2] + (x2 >> 31)) * 4294967296LL + (int64_t)x2 * rq[0] + 0x80000000LL) >> 32) >> rq[1];
            a->y[(ptrdiff_t)i * a->y_step + j] = (int8_t)(r < -128 ? -128 : (r > 127 ? 127 : r));
        }
}
#define ECMF_DW3 ecmf_dw3_c
#endif

/* Buffer columns of the pair path: pairs of a row times the stride, and the last window. */
static int32_t ecmf_dw3_cols(const ecmf_conv *cv) {
    return (2 * ((cv->out.w + 1) >> 1) - 1) * cv->p->stride_w + 3;
}

/* Row iy of image b, channels c .. c + 3, as `cols` buffer columns from input column -pad_left. */
static void ecmf_dw3_fill(const ecmf_conv *cv, int32_t b, int32_t iy, int32_t c, int32_t cols, int32_t *d) {
    const int32_t ch = cv->in.c, nzp = ecmf_neg_zp2(cv->p->input_zp), pl = cv->p->pad_left;
    int32_t j = 0, end = 0;
    if (iy >= 0 && iy < cv->in.h) {
        const int8_t *x = cv->in_data + (((size_t)b * cv->in.h + iy) * cv->in.w) * ch + c;
        end = pl + cv->in.w < cols ? pl + cv->in.w : cols;
        for (; j < pl && j < cols; j++) d[2 * j] = d[2 * j + 1] = 0;
        for (x += (ptrdiff_t)(j - pl) * ch; j < end; j++, x += ch) {
            const uint32_t v = ecmf_ld32(x);
            d[2 * j] = ecmf_sxtab16(nzp, v), d[2 * j + 1] = ecmf_sxtab16_ror8(nzp, v);
        }
    }
    for (; j < cols; j++) d[2 * j] = d[2 * j + 1] = 0;
}

/* Channels c .. c + 3 of every output pixel through ECMF_DW3, whole rows at a time; buf: 3 x
 * ECMF_DW3_COLS columns, rq: ecmf_dw3_rq's. */
static ECMF_NOINLINE void ecmf_dw3_block4(const ecmf_conv *cv, int32_t c, const int32_t *packed, const int32_t *rq,
                                          int32_t *buf) {
    const ecm_conv_params *p = cv->p;
    const int32_t cols = ecmf_dw3_cols(cv), oc = cv->out.c, ow = cv->out.w;
    int32_t held[3], b, oy, k;
    ecmf_dw3_args a;
    a.w = packed, a.rq = rq, a.y_step = oc, a.npix = ow;
    for (b = 0; b < cv->out.n; b++) {
        held[0] = held[1] = held[2] = INT32_MIN; /* the input row in each ring slot */
        for (oy = 0; oy < cv->out.h; oy++) {
            for (k = 0; k < 3; k++) {
                const int32_t iy = oy * p->stride_h - p->pad_top + k, slot = (int32_t)((uint32_t)(iy + 3) % 3u);
                int32_t *d = buf + 2 * ECMF_DW3_COLS * slot;
                if (held[slot] != iy) ecmf_dw3_fill(cv, b, iy, c, cols, d), held[slot] = iy;
                a.row[k] = d;
            }
            a.y = cv->out_data + (((size_t)b * cv->out.h + oy) * ow) * oc + c;
            ECMF_DW3(&a, p->stride_w == 2);
        }
    }
}

/* The last n < 4 channels, one pixel at a time. */
static void ecmf_dw_tail_block(const ecmf_conv *cv, int32_t c, int32_t n) {
    const ecm_conv_params *p = cv->p;
    const int32_t kw = cv->w.w, taps = cv->w.h * kw, ch = cv->in.c;
    int32_t b, oy, ox, ky0, ky1, kx0, kx1, acc[4];
    ecmf_patch pt;
    pt.len = 1, pt.x_row = p->dilation_h * cv->in.w * ch, pt.x_col = p->dilation_w * ch, pt.w_row = kw, pt.w_col = 1;
    for (b = 0; b < cv->out.n; b++)
        for (oy = 0; oy < cv->out.h; oy++)
            for (ox = 0; ox < cv->out.w; ox++) {
                const int32_t ys = oy * p->stride_h - p->pad_top, xs = ox * p->stride_w - p->pad_left;
                const int8_t *x = cv->in_data + (size_t)b * cv->in.h * cv->in.w * ch + c;
                ecmf_taps(ys, cv->w.h, p->dilation_h, cv->in.h, &ky0, &ky1);
                ecmf_taps(xs, kw, p->dilation_w, cv->in.w, &kx0, &kx1);
                pt.cols = kx1 - kx0, pt.rows = pt.cols > 0 ? ky1 - ky0 : 0;
                if (pt.rows > 0)
                    x += ((size_t)(ys + ky0 * p->dilation_h) * cv->in.w + (size_t)(xs + kx0 * p->dilation_w)) * ch;
                ecmf_dw_tail(&pt, x, cv->weights + (size_t)c * taps + ky0 * kw + kx0, taps, n, p->input_zp, acc);
                ecmf_store(&cv->o, acc, 1, c, n,
                           cv->out_data + (((size_t)b * cv->out.h + oy) * cv->out.w + ox) * cv->out.c + c, NULL);
            }
}

static ECMF_NOINLINE int ecmf_depthwise(const ecmf_conv *cv) {
    const ecm_conv_params *p = cv->p;
    const int32_t taps = cv->w.h * cv->w.w, ch = cv->in.c;
    const int pairs = cv->w.h == 3 && cv->w.w == 3 && p->dilation_h == 1 && p->dilation_w == 1 &&
                      (p->stride_w == 1 || p->stride_w == 2) && ch >= 4 && ecmf_dw3_cols(cv) <= ECMF_DW3_COLS;
    int32_t packed[2 * ECMF_DW_MAX_TAPS], rq_ch[4 * 4], rq_dw3[4 * 4], buf[3 * 2 * ECMF_DW3_COLS], c, t;
    ecmf_rq_args ra;
    if (taps > ECMF_DW_MAX_TAPS) return 0;
    for (c = 0; c + 4 <= ch; c += 4) {
        const int8_t *w = cv->weights + (size_t)c * taps;
        for (t = 0; t < taps; t++) { /* (w_c0, w_c2) and (w_c1, w_c3) of tap t */
            packed[2 * t] = (int32_t)(((uint32_t)w[t] & 0xFFFFu) | ((uint32_t)w[2 * taps + t] << 16));
            packed[2 * t + 1] = (int32_t)(((uint32_t)w[taps + t] & 0xFFFFu) | ((uint32_t)w[3 * taps + t] << 16));
        }
        if (cv->o.below_half) {
            ecmf_rq_prep(&cv->o, c, 4, rq_ch, &ra);
            ra.ch = rq_ch, ra.y_step = cv->out.c;
        }
        if (pairs && cv->o.below_half && ecmf_dw3_rq(&cv->o, c, rq_dw3))
            ecmf_dw3_block4(cv, c, packed, rq_dw3, buf);
        else
            ecmf_dw_block4(cv, c, packed, cv->o.below_half ? &ra : NULL);
    }
    if (c < ch) ecmf_dw_tail_block(cv, c, ch - c);
    return 1;
}

#endif /* ECM_FAST_DSP_H */
