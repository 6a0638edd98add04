/* ecw_rans.c - order-0 rANS decoder for the "rans" payload (FORMAT.md "rans").
 *
 * Reference decoder: one lane at a time, symbol lookup by binary search in a 257-entry
 * cumulative table (the whole state: 514 bytes + one lane). Fast path (workspace >=
 * ECW_FAST_WORKSPACE_SIZE): a 2^M-slot table (symbol, frequency, offset) and four lanes decoded
 * in lockstep so their dependency chains overlap (leftover lanes one at a time through the same
 * table); the last few symbols of every lane go through the checked reference step. */
#include <string.h>

#include "ecw_internal.h"

typedef struct {
    uint16_t cum[257]; /* cum[s] = sum of f[0..s), cum[256] = 2^M */
} ecw_ws_small;

typedef struct {
    ecw_ws_small small;
    uint16_t pad_;
    uint32_t fb[32768]; /* slot -> (f << 16) | (slot - cum[s]) */
    uint8_t sym[32768]; /* slot -> s */
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

/* Parse one table at *pp into ws->cum; advances *pp past it. */
static ecw_status read_table(const uint8_t **pp, const uint8_t *end, unsigned m, ecw_ws_small *ws) {
    const uint8_t *p = *pp;
    unsigned start, count, k, i, b, n, j;
    uint32_t total = 0, target = 1u << m;
    int32_t f = 0;
    bitreader br;
    if (end - p < 3) return ECW_E_STREAM;
    start = p[0];
    count = (unsigned)p[1] + 1u;
    k = p[2];
    if (k > 7u) return ECW_E_STREAM;
    memset(ws->cum, 0, sizeof ws->cum); /* cum[s + 1] holds f[s] until the prefix sum below */
    br.p = p + 3; br.end = end; br.bit = 0;
    for (i = 0; i < count; i++) {
        uint32_t v = 0, z;
        for (n = 0;; n++) { /* n leading zeros, n <= 16 */
            if (!br_bit(&br, &b)) return ECW_E_STREAM;
            if (b) break;
            if (n == 16u) return ECW_E_STREAM;
        }
        v = 1; /* the 1 just read is the top bit of z + 2^k */
        for (j = 0; j < n + k; j++) {
            if (!br_bit(&br, &b)) return ECW_E_STREAM;
            v = (v << 1) | b;
        }
        z = v - (1u << k);
        f += (z & 1u) ? -(int32_t)((z + 1u) >> 1) : (int32_t)(z >> 1);
        if (f < 0 || (uint32_t)f > target) return ECW_E_STREAM;
        ws->cum[((start + i) & 255u) + 1u] = (uint16_t)f;
        total += (uint32_t)f;
        if (total > target) return ECW_E_STREAM;
    }
    if (total != target) return ECW_E_STREAM;
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

typedef struct {
    uint32_t x;
    const uint8_t *p, *end;
    uint8_t *out;
    uint32_t left; /* symbols still to decode */
} lane;

/* Reference step loop with every read checked; finishes the lane. */
static ecw_status lane_finish(lane *ln, const uint16_t *cum, unsigned m, unsigned stride) {
    uint32_t mask = (1u << m) - 1u;
    while (ln->left) {
        uint32_t slot = ln->x & mask;
        unsigned s = find_symbol(cum, slot);
        ln->x = (uint32_t)(cum[s + 1] - cum[s]) * (ln->x >> m) + slot - cum[s];
        while (ln->x < ECW_RANS_L) { /* at most twice: x >= 2^8 after a step */
            if (ln->p >= ln->end) return ECW_E_STREAM;
            ln->x = (ln->x << 8) | *ln->p++;
        }
        *ln->out = (uint8_t)s;
        ln->out += stride;
        ln->left--;
    }
    return (ln->x == ECW_RANS_L && ln->p == ln->end) ? ECW_OK : ECW_E_STREAM;
}

#ifndef ECW_NO_FAST
/* Fast path: four lanes in lockstep. A step reads at most 2 bytes per lane, so `steps` steps
 * with steps <= left and 2 * steps <= bytes left need no bounds checks (the 2-byte peek below
 * included). State lives in locals: the byte stores through `out` could alias anything reached
 * through a pointer. The renormalization is branch-free: the byte count n (0, 1 or 2) follows
 * from x, and x takes the top n bytes of a 16-bit big-endian peek. GCC turns the textbook
 * `while (x < L)` or a `b ? (x << 8) | *p : x` select into branches that mispredict on every
 * other symbol (measured: 507 -> 650 MB/s on trained int8 weights, x86-64). */
#define ECW_STEP(x, p, o)                                                   \
    do {                                                                    \
        uint32_t slot_ = (x) & mask, e_ = ws->fb[slot_], n_, w_;            \
        *(o) = ws->sym[slot_];                                              \
        (o) += stride;                                                      \
        (x) = (e_ >> 16) * ((x) >> m) + (e_ & 0xffffu);                     \
        n_ = ((x) < ECW_RANS_L) + ((x) < (ECW_RANS_L >> 8));                \
        w_ = ((uint32_t)(p)[0] << 8) | (p)[1];                              \
        (x) = ((x) << (8u * n_)) | (w_ >> (16u - 8u * n_));                \
        (p) += n_;                                                          \
    } while (0)

static void lanes_fast4(lane *ln, const ecw_ws_fast *ws, unsigned m, unsigned stride) {
    const uint32_t mask = (1u << m) - 1u;
    uint32_t steps = 1, j;
    uint32_t x0 = ln[0].x, x1 = ln[1].x, x2 = ln[2].x, x3 = ln[3].x;
    const uint8_t *p0 = ln[0].p, *p1 = ln[1].p, *p2 = ln[2].p, *p3 = ln[3].p;
    uint8_t *o0 = ln[0].out, *o1 = ln[1].out, *o2 = ln[2].out, *o3 = ln[3].out;
    /* Chunks: each allows min(left, bytes/2) unchecked steps; bytes shrink geometrically. */
    while (steps) {
        steps = ln[0].left;
        if (ln[1].left < steps) steps = ln[1].left;
        if (ln[2].left < steps) steps = ln[2].left;
        if (ln[3].left < steps) steps = ln[3].left;
        if ((uint32_t)(ln[0].end - p0) / 2u < steps) steps = (uint32_t)(ln[0].end - p0) / 2u;
        if ((uint32_t)(ln[1].end - p1) / 2u < steps) steps = (uint32_t)(ln[1].end - p1) / 2u;
        if ((uint32_t)(ln[2].end - p2) / 2u < steps) steps = (uint32_t)(ln[2].end - p2) / 2u;
        if ((uint32_t)(ln[3].end - p3) / 2u < steps) steps = (uint32_t)(ln[3].end - p3) / 2u;
        for (j = 0; j < steps; j++) {
            ECW_STEP(x0, p0, o0);
            ECW_STEP(x1, p1, o1);
            ECW_STEP(x2, p2, o2);
            ECW_STEP(x3, p3, o3);
        }
        for (j = 0; j < 4; j++) ln[j].left -= steps;
    }
    ln[0].x = x0; ln[1].x = x1; ln[2].x = x2; ln[3].x = x3;
    ln[0].p = p0; ln[1].p = p1; ln[2].p = p2; ln[3].p = p3;
    ln[0].out = o0; ln[1].out = o1; ln[2].out = o2; ln[3].out = o3;
}

/* One lane through the slot table, same chunking: the 1-3 lanes of a group under 12289 symbols
 * (most tensors of a small CNN) and the leftover lanes of larger groups. */
static void lanes_fast1(lane *ln, const ecw_ws_fast *ws, unsigned m, unsigned stride) {
    const uint32_t mask = (1u << m) - 1u;
    uint32_t steps = 1, j, x0 = ln->x;
    const uint8_t *p0 = ln->p;
    uint8_t *o0 = ln->out;
    while (steps) {
        steps = ln->left;
        if ((uint32_t)(ln->end - p0) / 2u < steps) steps = (uint32_t)(ln->end - p0) / 2u;
        for (j = 0; j < steps; j++) ECW_STEP(x0, p0, o0);
        ln->left -= steps;
    }
    ln->x = x0; ln->p = p0; ln->out = o0;
}
#endif

ecw_status ecw_rans_decode(const uint8_t *src, uint64_t src_size, uint64_t n_symbols, unsigned itemsize,
                           uint8_t *dst, void *wsp, size_t ws_size) {
    ecw_ws_small *ws = (ecw_ws_small *)wsp;
#ifdef ECW_NO_FAST /* microcontrollers: reference decoder only */
    ecw_ws_fast *fast = NULL;
    (void)ws_size;
#else
    ecw_ws_fast *fast = ws_size >= ECW_FAST_WORKSPACE_SIZE ? (ecw_ws_fast *)wsp : NULL;
#endif
    const uint8_t *end = src + src_size, *tables, *tp, *sizes, *stream;
    unsigned m, shuffle, isz, stride;
    uint32_t g_count, lanes, n, g, q, r, pl;
    uint32_t group_len, plane_len;
    uint64_t total;
    if (src_size < 16u) return ECW_E_STREAM;
    m = src[0];
    shuffle = src[1];
    isz = src[2];
    g_count = ecw_le32(src + 4);
    lanes = ecw_le32(src + 8);
    n = ecw_le32(src + 12);
    if (m < 1u || m > ECW_RANS_MAX_SCALE_BITS || src[3] != 0 || shuffle > 1u) return ECW_E_STREAM;
    if (shuffle ? (itemsize < 2u || isz != itemsize) : (isz != 1u)) return ECW_E_STREAM;
    if ((uint64_t)n != n_symbols || n == 0 || g_count == 0 || n % g_count != 0 ||
        (shuffle && g_count % isz != 0))
        return ECW_E_STREAM;
    group_len = n / g_count;
    if (lanes == 0 || lanes > group_len || (group_len - 1u) / lanes + 1u > ECW_RANS_MAX_LANE) return ECW_E_STREAM;
    /* Pass 1: walk the tables to find the lane sizes; check the sizes add up to the payload. */
    tables = tp = src + 16;
    for (g = 0; g < g_count; g++) ECW_TRY(read_table(&tp, end, m, ws));
    if ((uint64_t)(end - tp) >> 2 < (uint64_t)g_count * lanes) return ECW_E_STREAM;
    sizes = tp;
    stream = tp + (size_t)4u * g_count * lanes;
    total = 0;
    for (pl = 0; pl < g_count * lanes; pl++) {
        uint32_t sz = ecw_le32(sizes + 4u * pl);
        if (sz < 4u) return ECW_E_STREAM;
        total += sz;
    }
    if (total != (uint64_t)(end - stream)) return ECW_E_STREAM;
    /* Pass 2: decode group by group. */
    stride = shuffle ? isz : 1u;
    plane_len = shuffle ? n / isz : n;
    q = (uint32_t)(group_len / lanes);
    r = (uint32_t)(group_len % lanes);
    tp = tables;
    for (g = 0; g < g_count; g++) {
        uint32_t k0 = g * group_len; /* first stream index of the group (< n < 2^32) */
        uint32_t p = 0;
        lane ln[4];
        ECW_TRY(read_table(&tp, end, m, ws));
        if (fast != NULL) { /* expand the table to slots */
            unsigned s;
            for (s = 0; s < 256u; s++) {
                uint32_t slot, f = (uint32_t)(ws->cum[s + 1] - ws->cum[s]);
                for (slot = ws->cum[s]; slot < ws->cum[s + 1]; slot++) {
                    fast->fb[slot] = (f << 16) | (slot - ws->cum[s]);
                    fast->sym[slot] = (uint8_t)s;
                }
            }
        }
        while (p < lanes) {
            unsigned j, batch = (fast != NULL && lanes - p >= 4u) ? 4u : 1u;
            for (j = 0; j < batch; j++, p++) {
                uint32_t k = k0 + p * q + (p < r ? p : r); /* lane's first stream index */
                uint32_t sz = ecw_le32(sizes + 4u * ((size_t)g * lanes + p));
                ln[j].p = stream;
                ln[j].end = stream + sz;
                stream += sz;
                ln[j].x = ecw_le32(ln[j].p);
                ln[j].p += 4;
                if (ln[j].x < ECW_RANS_L || ln[j].x >= (1u << 31)) return ECW_E_STREAM;
                ln[j].left = q + (p < r ? 1u : 0u);
                ln[j].out = dst + (k % plane_len) * stride + (k / plane_len);
            }
#ifndef ECW_NO_FAST
            if (batch == 4u) lanes_fast4(ln, fast, m, stride);
            else if (fast != NULL) lanes_fast1(ln, fast, m, stride);
#endif
            for (j = 0; j < batch; j++) ECW_TRY(lane_finish(&ln[j], ws->cum, m, stride));
        }
    }
    return ECW_OK;
}
