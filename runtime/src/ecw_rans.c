/* ecw_rans.c - order-0 rANS decoder for the "rans" payload (FORMAT.md "rans").
 *
 * A block interleaves its symbols over W lanes (symbol i in lane i mod W) that read one shared
 * stream of 16-bit words in symbol order; a symbol takes its group's table, and the decoder switches
 * tables where a group ends (class-map groups write their rows through a cursor). Reference
 * decoder: symbol by symbol, lookup by binary search in a 257-entry cumulative table (the whole
 * state: 514 bytes + 64 lane states). Fast path (workspace >= ECW_FAST_WORKSPACE_SIZE): a
 * 2^12-slot table of packed entries sym | (f - 1) << 8 | c << 20 (M <= 12), whole steps of W
 * symbols (the block's last ones through a zero-padded copy of its last bytes), the checked
 * reference loop for a partial step. On x86-64, blocks of 16, 24, ... lanes step 8 lanes per AVX2
 * instruction and blocks of 16k lanes 16 per AVX-512 instruction (8 lanes stay scalar): one gather for
 * the table, the renormalization words placed from one load (the lanes that need a word take
 * consecutive ones). A lane's steps form one dependency chain (gather, multiply, compare, word),
 * so speed grows with the lanes in flight: measured on 1M trained-like int8 symbols (Zen 5),
 * 32 lanes 1.8 GB/s, 64 lanes 2.7 GB/s, 128 lanes 2.7 GB/s; hence at most 64 lanes. */
#include <string.h>

#include "ecw_internal.h"

/* ECW_SIMD_MAX caps the vector width the decoder may pick: 16 (AVX-512, the default), 8 (AVX2)
 * or 0 (scalar); the tests build each to check every path against the reference. */
#ifndef ECW_SIMD_MAX
#define ECW_SIMD_MAX 16
#endif
#if !defined(ECW_NO_FAST) && ECW_SIMD_MAX >= 8 && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ECW_AVX2 1
#include <immintrin.h>
#endif

typedef struct {
    uint16_t cum[257]; /* cum[s] = sum of f[0..s), cum[256] = 2^M */
    uint16_t pad_;
    uint32_t x[ECW_RANS_MAX_LANES]; /* lane states of the block being decoded */
} ecw_ws_small;

typedef struct {
    ecw_ws_small small;
    uint32_t slot[(1u << ECW_RANS_MAX_SCALE_BITS) + 4u]; /* slot -> s | (f - 1) << 8 | (c[s]) << 20; 4 slack */
} ecw_ws_fast;

/* C99 static assertions: the macros in ecw.h cover the structs. */
typedef char ecw_ws_small_fits[(sizeof(ecw_ws_small) <= ECW_WORKSPACE_SIZE) ? 1 : -1];
typedef char ecw_ws_fast_fits[(sizeof(ecw_ws_fast) <= ECW_FAST_WORKSPACE_SIZE) ? 1 : -1];

typedef struct {
    const uint8_t *p, *end;
    unsigned bit; /* next bit inside *p */
} bitreader;

static int br_bit(bitreader *br, unsigned *b) {
    if (br->p >= br->end) return 0;
    *b = (*br->p >> br->bit) & 1u;
    if (++br->bit == 8u) { br->bit = 0; br->p++; }
    return 1;
}

/* One Exp-Golomb code of order k (FORMAT.md "rans"): n <= 16 zeros, then the n + k + 1 bits of
 * z + 2^k, most significant first. */
static int br_eg(bitreader *br, unsigned k, uint32_t *z) {
    unsigned n, j, b;
    uint32_t v = 1; /* the 1 that ends the zeros is the top bit of z + 2^k */
    for (n = 0;; n++) {
        if (!br_bit(br, &b)) return 0;
        if (b) break;
        if (n == 16u) return 0;
    }
    for (j = 0; j < n + k; j++) {
        if (!br_bit(br, &b)) return 0;
        v = (v << 1) | b;
    }
    *z = v - (1u << k);
    return 1;
}

static int32_t unzigzag(uint32_t z) { return (z & 1u) ? -(int32_t)((z + 1u) >> 1) : (int32_t)(z >> 1); }

/* Knot table: weights interpolated between knots (floor of the linear blend), then
 * f = max(1, w * 2^M / sum(w)) where w > 0; the rest of 2^M goes to the first largest f.
 * f[s] is written to cum[s + 1] (the weights pass through there first: both fit 16 bits). */
static ecw_status read_knots(bitreader *br, unsigned start, unsigned count, unsigned mode, unsigned m,
                             ecw_ws_small *ws) {
    unsigned kg = (mode >> 4) & 7u, kv = mode & 7u, at = 0, i, top = 0;
    uint32_t z, total = 0, sum = 0, target = 1u << m, inv;
    int32_t v;
    if (mode & 8u || !br_eg(br, kv, &z)) return ECW_E_STREAM;
    v = unzigzag(z);
    if (v < 0 || v > 0xFFFF) return ECW_E_STREAM;
    ws->cum[start + 1u] = (uint16_t)v; /* start + 1 <= 256 */
    total = (uint32_t)v;
    while (at < count - 1u) { /* one segment (at, at + gap] a pass */
        uint32_t gap, a;
        int32_t u = v, dq, dr, wq, wr;
        if (!br_eg(br, kg, &gap) || gap >= count - 1u - at || !br_eg(br, kv, &z)) return ECW_E_STREAM;
        gap++;
        v = u + unzigzag(z);
        if (v < 0 || v > 0xFFFF) return ECW_E_STREAM;
        /* w = u + floor(d * a / gap), d = v - u: stepped with a quotient and a remainder, so one
         * division a segment rather than one a position */
        dq = (v - u) / (int32_t)gap;
        dr = (v - u) % (int32_t)gap;
        if (dr < 0) { dr += (int32_t)gap; dq--; }
        for (a = 1, wq = u, wr = 0; a <= gap; a++) {
            wq += dq;
            wr += dr;
            if (wr >= (int32_t)gap) { wr -= (int32_t)gap; wq++; }
            ws->cum[((start + at + a) & 255u) + 1u] = (uint16_t)wq; /* between u and v */
            total += (uint32_t)wq;
        }
        at += gap;
    }
    if (total == 0) return ECW_E_STREAM;
    inv = 0xFFFFFFFFu / total; /* (w << m) / total by a multiply: low by at most 1, corrected */
    for (i = 0; i < count; i++) {
        unsigned s = ((start + i) & 255u) + 1u;
        uint32_t w = ws->cum[s], a = w << m, f = (uint32_t)(((uint64_t)a * inv) >> 32); /* a < 2^28 */
        if ((f + 1u) * total <= a) f++;
        if (w && !f) f = 1;
        ws->cum[s] = (uint16_t)f;
        sum += f;
        if (f > ws->cum[((start + top) & 255u) + 1u]) top = i;
    }
    i = ((start + top) & 255u) + 1u;
    if (sum > target + ws->cum[i] - 1u) return ECW_E_STREAM; /* the largest must keep f >= 1 */
    ws->cum[i] = (uint16_t)(ws->cum[i] + target - sum);
    return ECW_OK;
}

/* Parse one table at *pp into ws->cum; advances *pp past it. */
static ecw_status read_table(const uint8_t **pp, const uint8_t *end, unsigned m, ecw_ws_small *ws) {
    const uint8_t *p = *pp;
    unsigned start, count, k, i;
    uint32_t total = 0, target = 1u << m, z;
    int32_t f = 0;
    bitreader br;
    if (end - p < 3) return ECW_E_STREAM;
    start = p[0];
    count = (unsigned)p[1] + 1u;
    k = p[2];
    memset(ws->cum, 0, sizeof ws->cum); /* cum[s + 1] holds f[s] until the prefix sum below */
    br.p = p + 3; br.end = end; br.bit = 0;
    if (k & 0x80u) {
        ECW_TRY(read_knots(&br, start, count, k, m, ws));
    } else {
        if (k > 7u) return ECW_E_STREAM;
        for (i = 0; i < count; i++) {
            if (!br_eg(&br, k, &z)) return ECW_E_STREAM;
            f += unzigzag(z);
            if (f < 0 || (uint32_t)f > target) return ECW_E_STREAM;
            ws->cum[((start + i) & 255u) + 1u] = (uint16_t)f;
            total += (uint32_t)f;
            if (total > target) return ECW_E_STREAM;
        }
        if (total != target) return ECW_E_STREAM;
    }
    ws->cum[0] = 0;
    for (i = 0; i < 256u; i++) ws->cum[i + 1] = (uint16_t)(ws->cum[i + 1] + ws->cum[i]);
    *pp = br.p + (br.bit != 0);
    return ECW_OK;
}

/* Largest s with cum[s] <= slot: a symbol of non-zero frequency since cum[s+1] > slot. */
static unsigned find_symbol(const uint16_t *cum, uint32_t slot) {
    unsigned lo = 0, hi = 256; /* invariant: cum[lo] <= slot < cum[hi] */
    while (hi - lo > 1u) {
        unsigned mid = (lo + hi) >> 1;
        if (cum[mid] <= slot) lo = mid; else hi = mid;
    }
    return lo;
}

/* Where the decoder writes the stream, symbol after symbol (FORMAT.md "rans"): in order; with
 * shuffle, stream index k to dst[(k % plane_len) * stride + k / plane_len]; with a class map, a
 * group's symbols fill the rows of its class, in row order. */
typedef struct {
    uint8_t *dst;
    uint32_t k;         /* plain and shuffle: stream index of the next symbol */
    uint32_t plane_len; /* shuffle: symbols per byte plane */
    unsigned stride;    /* shuffle: itemsize; 1 otherwise */
    const uint8_t *map; /* the class map, or NULL */
    unsigned log_bits, cls; /* entries of 2^log_bits bits (never straddling a byte); the group's class */
    uint32_t rows, row_len, row, col; /* class map: the next symbol goes to dst[row * row_len + col] */
} sink;

static unsigned class_of(const sink *o, uint32_t r) {
    unsigned b = 1u << o->log_bits;
    return (o->map[r >> (3u - o->log_bits)] >> ((r << o->log_bits) & 7u)) & ((1u << b) - 1u);
}

/* The first row at or after r of class o->cls (o->rows if none). */
static uint32_t next_row(const sink *o, uint32_t r) {
    while (r < o->rows && class_of(o, r) != o->cls) r++;
    return r;
}

/* Write `count` consecutive stream symbols. A group emits exactly its length, so a class-map
 * cursor never runs past the last row of its class. A row piece at a time (memcpy) on the fast
 * path; microcontroller builds keep the symbol-by-symbol loop alone (smaller code). */
static void emit(sink *o, const uint8_t *s, uint32_t count) {
    while (count > 0) {
        uint32_t take = 1;
        if (o->map == NULL) {
#ifndef ECW_NO_FAST
            if (o->stride == 1u) {
                memcpy(o->dst + o->k, s, count);
                o->k += count;
                return;
            }
#endif
            o->dst[(o->k % o->plane_len) * o->stride + o->k / o->plane_len] = *s;
            o->k++;
        } else {
#ifndef ECW_NO_FAST
            take = o->row_len - o->col < count ? o->row_len - o->col : count;
#endif
            memcpy(o->dst + (size_t)o->row * o->row_len + o->col, s, take);
            o->col += take;
            if (o->col == o->row_len) {
                o->col = 0;
                o->row = next_row(o, o->row + 1u);
            }
        }
        s += take;
        count -= take;
    }
}

/* Reference loop, every read checked: symbols i..len-1 of a block, from lane states x[] and words
 * at *pp. */
static ecw_status block_finish(const uint8_t **pp, const uint8_t *end, uint32_t i, uint32_t len, unsigned w,
                               uint32_t *x, const uint16_t *cum, unsigned m, sink *o) {
    const uint8_t *p = *pp;
    uint32_t mask = (1u << m) - 1u;
    unsigned j = i % w;
    uint8_t sym;
    for (; i < len; i++) {
        uint32_t slot = x[j] & mask, xj;
        unsigned s = find_symbol(cum, slot);
        xj = (uint32_t)(cum[s + 1] - cum[s]) * (x[j] >> m) + slot - cum[s];
        if (xj < ECW_RANS_L) { /* one word restores x >= 2^16: x >= 1 after a step */
            if (end - p < 2) return ECW_E_STREAM;
            xj = (xj << 16) | ecw_le16(p);
            p += 2;
        }
        x[j] = xj;
        sym = (uint8_t)s;
        emit(o, &sym, 1u);
        if (++j == w) j = 0;
    }
    *pp = p;
    return ECW_OK;
}

#ifndef ECW_NO_FAST
/* One decoding step of lane state `xj` through the slot table; the symbol goes to `o`. The
 * renormalization is branch-free (GCC makes a conditional move of it). */
#define ECW_STEP(xj, o)                                                                \
    do {                                                                               \
        uint32_t e_ = tab[(xj) & mask], n_;                                            \
        (o) = (uint8_t)e_;                                                             \
        (xj) = (((e_ >> 8) & 0xfffu) + 1u) * ((xj) >> m) + ((xj) & mask) - (e_ >> 20); \
        n_ = (xj) < ECW_RANS_L;                                                        \
        (xj) = n_ ? ((xj) << 16) | ecw_le16(p) : (xj);                                 \
        p += 2u * n_;                                                                  \
    } while (0)

/* `steps` whole steps of W lanes (lanes in order), none of which can read past the block's bytes:
 * the caller guarantees 2 * W * steps bytes. Symbols go to out[0 .. W * steps). One and two lanes
 * keep their states in registers (the byte stores through `out` could alias the array). */
static const uint8_t *steps_scalar(const uint8_t *p, uint32_t steps, unsigned w, uint32_t *x,
                                   const uint32_t *tab, unsigned m, uint8_t *out) {
    const uint32_t mask = (1u << m) - 1u;
    uint32_t t, x0 = x[0], x1 = w > 1u ? x[1] : 0, xl[ECW_RANS_MAX_LANES];
    unsigned j;
    if (w == 1u) {
        for (t = 0; t < steps; t++) ECW_STEP(x0, out[t]);
        x[0] = x0;
    } else if (w == 2u) {
        for (t = 0; t < steps; t++, out += 2) {
            ECW_STEP(x0, out[0]);
            ECW_STEP(x1, out[1]);
        }
        x[0] = x0;
        x[1] = x1;
    } else {
        memcpy(xl, x, 4u * w);
        for (t = 0; t < steps; t++, out += w)
            for (j = 0; j < w; j++) ECW_STEP(xl[j], out[j]);
        memcpy(x, xl, 4u * w);
    }
    return p;
}

#ifdef ECW_AVX2
/* AVX2 word placement: for a need mask s of 8 lanes, lane i takes word popcount(s & (2^i - 1))
 * of the 8 loaded (a compile-time table: 2 KiB of read-only data, x86 builds only). */
#define ECW_B(s, i) (((s) >> (i)) & 1)
#define ECW_ROW(s)                                                                                        \
    {0, ECW_B(s, 0), ECW_B(s, 0) + ECW_B(s, 1), ECW_B(s, 0) + ECW_B(s, 1) + ECW_B(s, 2),                  \
     ECW_B(s, 0) + ECW_B(s, 1) + ECW_B(s, 2) + ECW_B(s, 3),                                              \
     ECW_B(s, 0) + ECW_B(s, 1) + ECW_B(s, 2) + ECW_B(s, 3) + ECW_B(s, 4),                                \
     ECW_B(s, 0) + ECW_B(s, 1) + ECW_B(s, 2) + ECW_B(s, 3) + ECW_B(s, 4) + ECW_B(s, 5),                  \
     ECW_B(s, 0) + ECW_B(s, 1) + ECW_B(s, 2) + ECW_B(s, 3) + ECW_B(s, 4) + ECW_B(s, 5) + ECW_B(s, 6)}
#define ECW_ROW4(s) ECW_ROW(s), ECW_ROW((s) + 1), ECW_ROW((s) + 2), ECW_ROW((s) + 3)
#define ECW_ROW16(s) ECW_ROW4(s), ECW_ROW4((s) + 4), ECW_ROW4((s) + 8), ECW_ROW4((s) + 12)
#define ECW_ROW64(s) ECW_ROW16(s), ECW_ROW16((s) + 16), ECW_ROW16((s) + 32), ECW_ROW16((s) + 48)
static const uint8_t ecw_expand[256][8] = {ECW_ROW64(0), ECW_ROW64(64), ECW_ROW64(128), ECW_ROW64(192)};

/* The same steps for W a multiple of 8 (up to 64), eight lanes a vector. Needs 2 * W * steps + 16 bytes: a
 * vector loads 8 words whichever of its lanes take one. */
__attribute__((target("avx2,popcnt"))) static const uint8_t *steps_avx2(const uint8_t *p, uint32_t steps,
                                                                      unsigned w, uint32_t *x,
                                                                      const ecw_ws_fast *ws, unsigned m,
                                                                      uint8_t *out) {
    const __m256i mask = _mm256_set1_epi32((int)((1u << m) - 1u)), low12 = _mm256_set1_epi32(0xfff);
    const __m256i one = _mm256_set1_epi32(1), below = _mm256_set1_epi32(0xffff);
    const __m256i lowbytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                              0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i join = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
    const __m128i shift = _mm_cvtsi32_si128((int)m);
    __m256i xv[8];
    unsigned v, nv = w / 8u;
    uint32_t t;
    for (v = 0; v < nv; v++) xv[v] = _mm256_loadu_si256((const __m256i *)(x + 8u * v));
    for (t = 0; t < steps; t++, out += w) {
        for (v = 0; v < nv; v++) {
            __m256i slot = _mm256_and_si256(xv[v], mask);
            __m256i e = _mm256_i32gather_epi32((const int *)ws->slot, slot, 4);
            __m256i f = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(e, 8), low12), one);
            __m256i y = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srl_epi32(xv[v], shift)),
                                         _mm256_sub_epi32(slot, _mm256_srli_epi32(e, 20)));
            __m256i need = _mm256_cmpeq_epi32(_mm256_min_epu32(y, below), y);
            unsigned bits = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));
            __m256i wd = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
            __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)ecw_expand[bits]));
            __m256i s = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(e, lowbytes), join);
            wd = _mm256_permutevar8x32_epi32(wd, idx);
            xv[v] = _mm256_blendv_epi8(y, _mm256_or_si256(_mm256_slli_epi32(y, 16), wd), need);
            p += 2 * __builtin_popcount(bits);
            _mm_storel_epi64((__m128i *)(out + 8u * v), _mm256_castsi256_si128(s));
        }
    }
    for (v = 0; v < nv; v++) _mm256_storeu_si256((__m256i *)(x + 8u * v), xv[v]);
    return p;
}

/* W a multiple of 16 (up to 64) with AVX-512: sixteen lanes a vector, vpexpandd places the words. Needs
 * 2 * W * steps + 32 bytes. */
__attribute__((target("avx512f,avx512bw,popcnt"))) static const uint8_t *steps_avx512(
    const uint8_t *p, uint32_t steps, unsigned w, uint32_t *x, const ecw_ws_fast *ws, unsigned m, uint8_t *out) {
    const __m512i mask = _mm512_set1_epi32((int)((1u << m) - 1u)), low12 = _mm512_set1_epi32(0xfff);
    const __m512i one = _mm512_set1_epi32(1), lim = _mm512_set1_epi32((int)ECW_RANS_L);
    const __m128i shift = _mm_cvtsi32_si128((int)m);
    __m512i xv[4];
    unsigned v, nv = w / 16u;
    uint32_t t;
    for (v = 0; v < nv; v++) xv[v] = _mm512_loadu_si512((const void *)(x + 16u * v));
    for (t = 0; t < steps; t++, out += w) {
        for (v = 0; v < nv; v++) {
            __m512i slot = _mm512_and_si512(xv[v], mask);
            __m512i e = _mm512_i32gather_epi32(slot, (const void *)ws->slot, 4);
            __m512i f = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(e, 8), low12), one);
            __m512i y = _mm512_add_epi32(_mm512_mullo_epi32(f, _mm512_srl_epi32(xv[v], shift)),
                                         _mm512_sub_epi32(slot, _mm512_srli_epi32(e, 20)));
            __mmask16 need = _mm512_cmplt_epu32_mask(y, lim);
            __m512i wd = _mm512_maskz_expand_epi32(need, _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)));
            xv[v] = _mm512_mask_or_epi32(y, need, _mm512_slli_epi32(y, 16), wd);
            p += 2 * __builtin_popcount((unsigned)need);
            _mm_storeu_si128((__m128i *)(out + 16u * v), _mm512_cvtepi32_epi8(e));
        }
    }
    for (v = 0; v < nv; v++) _mm512_storeu_si512((void *)(x + 16u * v), xv[v]);
    return p;
}

/* 0: scalar, 8: AVX2, 16: AVX-512 (F and BW); the widest this CPU runs. Benign race: every
 * thread computes the same value. */
static unsigned simd_width(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = !__builtin_cpu_supports("popcnt") ? 0
                 : (ECW_SIMD_MAX >= 16 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) ? 16
                 : (ECW_SIMD_MAX >= 8 && __builtin_cpu_supports("avx2")) ? 8 : 0;
    }
    return (unsigned)cached;
}
#endif

/* The fast path's stack buffers, documented in ecw.h as ECW_FAST_STACK_BYTES (checked here). */
#define FAST_TMP_BYTES 4096u
#define FAST_PAD_BYTES (4096u + 256u)
typedef char ecw_fast_stack_documented[FAST_TMP_BYTES + FAST_PAD_BYTES == ECW_FAST_STACK_BYTES ? 1 : -1];

/* Fast block decode: whole steps in chunks (each checked once against the bytes left, which
 * shrink geometrically), staged through `tmp` unless the output is in stream order. Where fewer
 * than 2 W bytes a step are left, the steps read a zero-padded copy of the block's last bytes: a
 * valid block never reads past its end, so a read into the padding means a corrupt block (NULL).
 * Measured on a 70 % pruned 131k tensor (64 lanes): the checked loop had taken 1/7 of the time. */
static const uint8_t *block_fast(const uint8_t *p, const uint8_t *end, uint32_t len, unsigned w, uint32_t *x,
                                 const ecw_ws_fast *ws, unsigned m, sink *o, uint32_t *done) {
    uint8_t tmp[FAST_TMP_BYTES], pad[FAST_PAD_BYTES];
    uint32_t full = len / w, t = 0;
#ifdef ECW_AVX2
    const unsigned vw = simd_width();
    /* one AVX2 vector is one dependency chain: 8 scalar lanes are faster (9216 symbols: 709 MB/s
     * against 439), so AVX2 takes two vectors or more */
    const unsigned simd = (vw == 16u && w % 16u == 0) ? 16u : (vw >= 8u && w % 8u == 0 && w >= 16u) ? 8u : 0u;
#else
    const unsigned simd = 0;
#endif
    const size_t slack = 2u * simd; /* a vector loads `simd` words whichever lanes take one */
    while (t < full) {
        size_t avail = (size_t)(end - p), used;
        uint32_t steps = full - t;
        const uint8_t *src = p, *q;
        uint8_t *out = o->stride == 1u && o->map == NULL ? o->dst + o->k : tmp;
        if (avail < slack + 2u * w) { /* < 160 bytes */
            memcpy(pad, p, avail);
            memset(pad + avail, 0, sizeof pad - avail);
            src = pad;
            avail = sizeof pad;
        }
        if ((avail - slack) / (2u * w) < steps) steps = (uint32_t)((avail - slack) / (2u * w));
        if (out == tmp && steps > sizeof tmp / w) steps = (uint32_t)(sizeof tmp / w);
#ifdef ECW_AVX2
        if (simd == 16u) q = steps_avx512(src, steps, w, x, ws, m, out);
        else if (simd == 8u) q = steps_avx2(src, steps, w, x, ws, m, out);
        else
#endif
            q = steps_scalar(src, steps, w, x, ws->slot, m, out);
        used = (size_t)(q - src);
        if (src == pad && used > (size_t)(end - p)) return NULL;
        p += used;
        if (out == tmp) emit(o, tmp, steps * w);
        else o->k += steps * w;
        t += steps;
    }
    *done = t * w;
    return p;
}

/* Four entries a pass, symbols in slot order: a symbol's last pass may spill up to 3 entries into the
 * next symbol's slots (rewritten by it) or into the 4 slack entries after 2^12. Measured on the 7 KB
 * MLP (two M = 12 tables): 338 -> 355 MB/s against one entry a pass; eight a pass gained nothing. */
static void fill_slots(ecw_ws_fast *fast) {
    unsigned s;
    for (s = 0; s < 256u; s++) {
        uint32_t c = fast->small.cum[s], f = (uint32_t)fast->small.cum[s + 1] - c;
        uint32_t v = s | ((f - 1u) << 8) | (c << 20), *d = fast->slot + c, *e = d + f;
        for (; d < e; d += 4) { d[0] = v; d[1] = v; d[2] = v; d[3] = v; }
    }
}

/* Symbols *i..stop-1 of a block on the fast path as far as it goes: the checked loop up to the next
 * whole step (a table switch can fall inside one), then whole unchecked steps; *i says where the
 * caller's checked loop goes on. */
static ecw_status run_fast(const uint8_t **pp, const uint8_t *end, uint32_t *i, uint32_t stop, unsigned w,
                           uint32_t *x, const ecw_ws_fast *ws, unsigned m, sink *o) {
    uint32_t head = (w - *i % w) % w, done = 0;
    if (head >= stop - *i) return ECW_OK;
    ECW_TRY(block_finish(pp, end, *i, *i + head, w, x, ws->small.cum, m, o));
    *i += head;
    *pp = block_fast(*pp, end, stop - *i, w, x, ws, m, o, &done);
    if (*pp == NULL) return ECW_E_STREAM;
    *i += done;
    return ECW_OK;
}
#endif

/* The payload's fixed header (ECW_RANS_HDR_*), checked against what the entry implies. */
typedef struct {
    unsigned m, flags, isz, w; /* scale bits, flags (1 shuffle, 2 class map), itemsize, lanes */
    uint32_t g_count, block, n; /* groups (tables), symbols a block, symbols in all */
} rans_header;

static ecw_status read_header(const uint8_t *src, uint64_t src_size, uint64_t n_symbols, unsigned itemsize,
                              rans_header *h) {
    unsigned shuffle;
    if (src_size < ECW_RANS_HEADER_SIZE || n_symbols == 0 || n_symbols > 0xFFFFFFFFu) return ECW_E_STREAM;
    h->m = src[ECW_RANS_HDR_SCALE_BITS];
    h->flags = src[ECW_RANS_HDR_FLAGS];
    shuffle = h->flags & 1u;
    h->isz = src[ECW_RANS_HDR_ITEMSIZE];
    h->w = src[ECW_RANS_HDR_LANES];
    h->g_count = ecw_le32(src + ECW_RANS_HDR_N_GROUPS);
    h->block = ecw_le32(src + ECW_RANS_HDR_BLOCK);
    h->n = (uint32_t)n_symbols;
    if (h->m < 1u || h->m > ECW_RANS_MAX_SCALE_BITS || h->flags > 2u) return ECW_E_STREAM; /* shuffle or classes */
    if (shuffle ? (itemsize < 2u || h->isz != itemsize) : (h->isz != 1u)) return ECW_E_STREAM;
    if (h->g_count == 0 || (!(h->flags & 2u) && h->n % h->g_count != 0) || (shuffle && h->g_count % h->isz != 0))
        return ECW_E_STREAM;
    if (h->w < 1u || h->w > ECW_RANS_MAX_LANES || h->block < h->w ||
        h->block > (uint64_t)h->w * ECW_RANS_MAX_LANE)
        return ECW_E_STREAM;
    return ECW_OK;
}

/* The class map (flags bit 2): u32 rows, then one 1/2/4-bit class per row. Counts the rows of each
 * class into class_rows and sets *tables to the first table, past the map. */
static ecw_status read_class_map(const uint8_t *src, uint64_t src_size, const rans_header *h, sink *o,
                                 uint32_t class_rows[16], const uint8_t **tables) {
    uint64_t map_bytes;
    uint32_t r;
    if (h->g_count < 2u || h->g_count > 16u || src_size < ECW_RANS_HEADER_SIZE + 4u) return ECW_E_STREAM;
    o->rows = ecw_le32(src + ECW_RANS_HEADER_SIZE);
    o->log_bits = h->g_count <= 2u ? 0u : h->g_count <= 4u ? 1u : 2u;
    map_bytes = (((uint64_t)o->rows << o->log_bits) + 7u) / 8u;
    if (o->rows == 0 || h->n % o->rows != 0 || map_bytes > src_size - (ECW_RANS_HEADER_SIZE + 4u))
        return ECW_E_STREAM;
    o->map = src + ECW_RANS_HEADER_SIZE + 4u;
    o->row_len = h->n / o->rows;
    *tables = o->map + map_bytes;
    for (r = 0; r < o->rows; r++) {
        unsigned c = class_of(o, r);
        if (c >= h->g_count) return ECW_E_STREAM; /* a class past the tables */
        class_rows[c]++;
    }
    return ECW_OK;
}

/* Pass 2's state: the next table to read, the group being decoded and where it ends. */
typedef struct {
    const rans_header *h;
    const uint8_t *end, *tp;
    uint32_t g, group_end;
    const uint32_t *class_rows;
    ecw_ws_small *ws;
#ifndef ECW_NO_FAST
    ecw_ws_fast *fast; /* NULL: the reference decoder only */
#endif
    sink *o;
} decoder;

/* One block of `len` symbols from symbol k0, `sz` bytes at `stream`: W lane states, then the
 * lanes' words; a symbol takes its group's table, switched where a group ends (inside a block or
 * at its end). Every lane must end with x == L and the block's bytes all read. */
static ecw_status decode_block(decoder *d, const uint8_t *stream, uint64_t sz, uint32_t k0, uint32_t len) {
    const rans_header *h = d->h;
    const unsigned w = h->w;
    ecw_ws_small *ws = d->ws;
    const uint8_t *p, *bend;
    uint32_t i = 0;
    unsigned j;
    if (sz < 4u * w || (sz - 4u * w) % 2u != 0) return ECW_E_STREAM;
    p = stream + 4u * w;
    bend = stream + sz;
    for (j = 0; j < w; j++) {
        ws->x[j] = ecw_le32(stream + 4u * j);
        if (ws->x[j] < ECW_RANS_L) return ECW_E_STREAM;
    }
    while (i < len) {
        uint32_t stop;
        if (k0 + i == d->group_end) { /* the next group starts: its table and rows */
            if (h->g_count > 1u) ECW_TRY(read_table(&d->tp, d->end, h->m, ws)); /* one table: pass 1 left it */
#ifndef ECW_NO_FAST
            if (d->fast != NULL) fill_slots(d->fast);
#endif
            d->group_end += d->o->map != NULL ? d->class_rows[d->g] * d->o->row_len : h->n / h->g_count; /* <= n */
            d->o->cls = d->g++;
            d->o->row = next_row(d->o, 0);
        }
        stop = d->group_end - k0 < len ? d->group_end - k0 : len;
#ifndef ECW_NO_FAST
        if (d->fast != NULL) ECW_TRY(run_fast(&p, bend, &i, stop, w, ws->x, d->fast, h->m, d->o));
#endif
        ECW_TRY(block_finish(&p, bend, i, stop, w, ws->x, ws->cum, h->m, d->o));
        i = stop;
    }
    if (p != bend) return ECW_E_STREAM;
    for (j = 0; j < w; j++)
        if (ws->x[j] != ECW_RANS_L) return ECW_E_STREAM;
    return ECW_OK;
}

ecw_status ecw_rans_decode(const uint8_t *src, uint64_t src_size, uint64_t n_symbols, unsigned itemsize,
                           uint8_t *dst, void *wsp, size_t ws_size) {
    const uint8_t *end = src + src_size, *tables, *tp, *sizes, *stream;
    uint32_t class_rows[16] = {0}; /* with a class map: rows of each class */
    uint32_t g, k0, len, n_blocks;
    uint64_t at;
    rans_header h;
    sink o = {0};
    decoder d;
    ECW_TRY(read_header(src, src_size, n_symbols, itemsize, &h));
    o.dst = dst;
    o.stride = h.isz; /* 1 without shuffle */
    o.plane_len = h.n / h.isz;
    tables = src + ECW_RANS_HEADER_SIZE;
    if (h.flags & 2u) ECW_TRY(read_class_map(src, src_size, &h, &o, class_rows, &tables));
    /* Pass 1: walk the tables to find the block sizes (every block's but the last, which is the
     * rest of the payload); check every group has symbols. */
    tp = tables;
    for (g = 0; g < h.g_count; g++) {
        ECW_TRY(read_table(&tp, end, h.m, (ecw_ws_small *)wsp));
        if (o.map != NULL && class_rows[g] == 0) return ECW_E_STREAM; /* an empty class */
    }
    n_blocks = (h.n - 1u) / h.block + 1u;
    if ((uint64_t)(end - tp) >> 2 < n_blocks - 1u) return ECW_E_STREAM;
    sizes = tp;
    stream = tp + (size_t)4u * (n_blocks - 1u);
    /* Pass 2: decode block by block, each size checked against the bytes left. */
    d.h = &h;
    d.end = end;
    d.tp = tables;
    d.g = 0;
    d.group_end = 0;
    d.class_rows = class_rows;
    d.ws = (ecw_ws_small *)wsp;
#ifdef ECW_NO_FAST /* microcontrollers: reference decoder only */
    (void)ws_size;
#else
    d.fast = ws_size >= ECW_FAST_WORKSPACE_SIZE ? (ecw_ws_fast *)wsp : NULL;
#endif
    d.o = &o;
    for (k0 = 0, at = 0; k0 < h.n; k0 += len, at++) {
        uint64_t sz = at + 1u < n_blocks ? ecw_le32(sizes + 4u * at) : (uint64_t)(end - stream);
        len = h.n - k0 < h.block ? h.n - k0 : h.block;
        if (sz > (uint64_t)(end - stream)) return ECW_E_STREAM;
        ECW_TRY(decode_block(&d, stream, sz, k0, len));
        stream += sz;
    }
    return ECW_OK;
}
