/* ecw_internal.h - shared between the runtime's translation units; not part of the API. */
#ifndef ECW_INTERNAL_H
#define ECW_INTERNAL_H

#include "ecw.h"

/* Return the status of `expr` if it is not ECW_OK (zstd's FORWARD_IF_ERROR, in small). */
#define ECW_TRY(expr)                         \
    do {                                      \
        ecw_status ecw_try_s_ = (expr);       \
        if (ecw_try_s_ != ECW_OK) return ecw_try_s_; \
    } while (0)

#define ECW_RANS_L (1u << 16)
#define ECW_RANS_MAX_SCALE_BITS 12u
#define ECW_RANS_MAX_LANES 64u
#define ECW_RANS_MAX_LANE 65536u /* symbols a lane holds in one block */

static inline uint32_t ecw_le16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }
static inline uint32_t ecw_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t ecw_le64(const uint8_t *p) {
    return (uint64_t)ecw_le32(p) | ((uint64_t)ecw_le32(p + 4) << 32);
}

/* Decode a rans payload (FORMAT.md) of `n_symbols` stream bytes into dst. `itemsize` is the
 * element size the entry implies (1 for lut indices): with shuffle, stream byte k of plane
 * k / (n / itemsize) goes to dst[(k % (n / itemsize)) * itemsize + plane]. */
ecw_status ecw_rans_decode(const uint8_t *src, uint64_t src_size, uint64_t n_symbols, unsigned itemsize,
                           uint8_t *dst, void *ws, size_t ws_size);

#endif
