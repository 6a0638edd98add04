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

/* Byte offsets of the container's fixed-size records (runtime/FORMAT.md "Header", "Tensor entry",
 * "rans", "lut"), named once; tests/container/test_format_doc.py holds every one to the field
 * tables of edgecompile/container/format.py (HEADER_FIELDS, ENTRY_FIELDS, RANS_HEADER_FIELDS,
 * LUT_HEADER_FIELDS). All fields little-endian. */
#define ECW_HEADER_SIZE 32u
#define ECW_HDR_MAGIC 0u
#define ECW_HDR_VERSION 4u
#define ECW_HDR_ENTRY_SIZE 6u
#define ECW_HDR_N_TENSORS 8u
#define ECW_HDR_META_SIZE 12u
#define ECW_HDR_FILE_SIZE 16u
#define ECW_HDR_FLAGS 24u
#define ECW_HDR_META_CRC32 28u

#define ECW_ENTRY_SIZE 80u
#define ECW_ENT_OFFSET 0u
#define ECW_ENT_ENCODED_SIZE 8u
#define ECW_ENT_DECODED_SIZE 16u
#define ECW_ENT_CRC32 24u
#define ECW_ENT_NAME_OFF 28u
#define ECW_ENT_NAME_LEN 32u
#define ECW_ENT_DTYPE 34u
#define ECW_ENT_CODEC 35u
#define ECW_ENT_NDIM 36u
#define ECW_ENT_LAYOUT 37u
#define ECW_ENT_QUANT_KIND 38u
#define ECW_ENT_QUANT_AXIS 39u
#define ECW_ENT_QUANT_OFF 40u
#define ECW_ENT_QUANT_COUNT 44u
#define ECW_ENT_DIMS 48u
#define ECW_ENT_RESERVED 72u

#define ECW_RANS_HEADER_SIZE 12u
#define ECW_RANS_HDR_SCALE_BITS 0u
#define ECW_RANS_HDR_FLAGS 1u
#define ECW_RANS_HDR_ITEMSIZE 2u
#define ECW_RANS_HDR_LANES 3u
#define ECW_RANS_HDR_N_GROUPS 4u
#define ECW_RANS_HDR_BLOCK 8u

#define ECW_LUT_HEADER_SIZE 4u
#define ECW_LUT_HDR_BITS 0u
#define ECW_LUT_HDR_INDEX_CODEC 1u
#define ECW_LUT_HDR_K 2u

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
