/* ecw_container.c - header and tensor-table validation, codec dispatch, lut decoding.
 * Field offsets are named in ecw_internal.h (ECW_HDR_*, ECW_ENT_*, ECW_LUT_HDR_*), after
 * runtime/FORMAT.md ("Header", "Tensor entry", "lut"). */
#include <string.h>

#include "ecw_internal.h"

#ifdef ECW_WITH_ZSTD
#include <zstd.h>
#endif

unsigned ecw_dtype_size(uint8_t dtype) {
    /* codes 1..11: int8 uint8 int16 uint16 int32 uint32 float16 float32 int64 bool (one byte, 0 or 1)
     * float64 */
    static const uint8_t size[12] = {0, 1, 1, 2, 2, 4, 4, 2, 4, 8, 1, 8};
    return dtype < 12u ? size[dtype] : 0u;
}

const char *ecw_status_name(ecw_status s) {
    static const char *const names[] = {"ECW_OK", "ECW_E_ARG", "ECW_E_MAGIC", "ECW_E_VERSION",
                                        "ECW_E_TRUNCATED", "ECW_E_HEADER", "ECW_E_CODEC",
                                        "ECW_E_CODEC_UNAVAILABLE", "ECW_E_STREAM", "ECW_E_CHECKSUM",
                                        "ECW_E_NOT_FOUND"};
    int i = -(int)s;
    return (i >= 0 && i <= 10) ? names[i] : "ECW_E_UNKNOWN";
}

ecw_status ecw_open(ecw_container *c, const void *data, size_t size) {
    const uint8_t *p = (const uint8_t *)data;
    uint64_t n, meta_size, file_size, table_end;
    uint32_t i;
    ecw_tensor t;
    if (c == NULL || (p == NULL && size != 0)) return ECW_E_ARG;
    memset(c, 0, sizeof *c);
    if (size < 4) return (size == 0 || memcmp(p, "ECW1", size) == 0) ? ECW_E_TRUNCATED : ECW_E_MAGIC;
    if (memcmp(p, "ECW1", 4) != 0) return ECW_E_MAGIC;
    if (size < ECW_HEADER_SIZE) return ECW_E_TRUNCATED;
    if (ecw_le16(p + ECW_HDR_VERSION) != 4u) return ECW_E_VERSION;
    n = ecw_le32(p + ECW_HDR_N_TENSORS);
    meta_size = ecw_le32(p + ECW_HDR_META_SIZE);
    file_size = ecw_le64(p + ECW_HDR_FILE_SIZE);
    if (file_size > (uint64_t)size) return ECW_E_TRUNCATED;
    table_end = ECW_HEADER_SIZE + ECW_ENTRY_SIZE * n + meta_size; /* < 2^40: no overflow */
    if (ecw_le16(p + ECW_HDR_ENTRY_SIZE) != ECW_ENTRY_SIZE || ecw_le32(p + ECW_HDR_FLAGS) != 0u ||
        table_end > file_size)
        return ECW_E_HEADER;
    if (ecw_crc32(ecw_crc32(0, p, ECW_HDR_META_CRC32), p + ECW_HEADER_SIZE,
                  (size_t)(table_end - ECW_HEADER_SIZE)) != ecw_le32(p + ECW_HDR_META_CRC32))
        return ECW_E_CHECKSUM;
    c->data = p;
    c->size = file_size;
    c->n_tensors = (uint32_t)n;
    c->meta = p + (table_end - meta_size);
    c->meta_size = (uint32_t)meta_size;
    c->data_start = (table_end + 15u) & ~(uint64_t)15u;
    for (i = 0; i < c->n_tensors; i++) ECW_TRY(ecw_tensor_at(c, i, &t));
    return ECW_OK;
}

ecw_status ecw_tensor_at(const ecw_container *c, uint32_t index, ecw_tensor *t) {
    const uint8_t *e;
    uint64_t prod = 1, name_off, quant_off;
    unsigned isz, k;
    if (c == NULL || t == NULL || c->data == NULL || index >= c->n_tensors) return ECW_E_ARG;
    e = c->data + ECW_HEADER_SIZE + (size_t)ECW_ENTRY_SIZE * index;
    memset(t, 0, sizeof *t);
    t->offset = ecw_le64(e + ECW_ENT_OFFSET);
    t->encoded_size = ecw_le64(e + ECW_ENT_ENCODED_SIZE);
    t->decoded_size = ecw_le64(e + ECW_ENT_DECODED_SIZE);
    t->crc32 = ecw_le32(e + ECW_ENT_CRC32);
    name_off = ecw_le32(e + ECW_ENT_NAME_OFF);
    t->name_len = (uint16_t)ecw_le16(e + ECW_ENT_NAME_LEN);
    t->dtype = e[ECW_ENT_DTYPE];
    t->codec = e[ECW_ENT_CODEC];
    t->ndim = e[ECW_ENT_NDIM];
    t->layout = e[ECW_ENT_LAYOUT];
    t->quant_kind = e[ECW_ENT_QUANT_KIND];
    t->quant_axis = e[ECW_ENT_QUANT_AXIS];
    quant_off = ecw_le32(e + ECW_ENT_QUANT_OFF);
    t->quant_count = ecw_le32(e + ECW_ENT_QUANT_COUNT);
    isz = ecw_dtype_size(t->dtype);
    if (isz == 0 || t->ndim > ECW_MAX_NDIM || t->layout > 5u) return ECW_E_HEADER;
    for (k = 0; k < ECW_MAX_NDIM; k++) {
        t->dims[k] = ecw_le32(e + ECW_ENT_DIMS + 4 * k);
        if (k >= t->ndim && t->dims[k] != 0) return ECW_E_HEADER;
    }
    for (k = ECW_ENT_RESERVED; k < ECW_ENTRY_SIZE; k++)
        if (e[k] != 0) return ECW_E_HEADER;
    /* decoded_size must be itemsize x prod(dims); fewer than 2^32 elements (FORMAT.md), so the
     * product never overflows and no 64-bit division is needed (none on Cortex-M). */
    for (k = 0; k < t->ndim; k++) {
        prod *= t->dims[k];
        if (prod > 0xFFFFFFFFu) return ECW_E_HEADER;
    }
    if (prod * isz != t->decoded_size) return ECW_E_HEADER;
    if (t->name_len == 0 || t->name_len > 1024u || name_off + t->name_len > c->meta_size) return ECW_E_HEADER;
    t->name = (const char *)(c->meta + name_off);
    if (t->offset % 16u != 0 || t->offset < c->data_start || t->encoded_size > c->size ||
        t->offset > c->size - t->encoded_size)
        return ECW_E_HEADER;
    if (t->quant_kind == 0) {
        if (t->quant_count != 0 || t->quant_axis != 255u) return ECW_E_HEADER;
    } else {
        if (t->quant_kind == 1 && (t->quant_count != 1u || t->quant_axis != 255u)) return ECW_E_HEADER;
        if (t->quant_kind == 2 && (t->quant_axis >= t->ndim || t->quant_count != t->dims[t->quant_axis] ||
                                   t->quant_count == 0))
            return ECW_E_HEADER;
        if (t->quant_kind > 2u || quant_off % 4u != 0 || quant_off + 8u * (uint64_t)t->quant_count > c->meta_size)
            return ECW_E_HEADER;
        t->quant = c->meta + quant_off;
    }
    if (t->codec > ECW_CODEC_LUT) return ECW_E_CODEC;
    /* FORMAT.md "Errors": a payload bounds its decoded size (ratios 1, 2^20, 2^14, 2^17) */
    {
        static const uint8_t log2_ratio[4] = {0u, 20u, 14u, 17u};
        unsigned sh = log2_ratio[t->codec];
        if ((t->encoded_size >> (63u - sh)) != 0 || t->decoded_size > (t->encoded_size << sh) ||
            (t->codec == ECW_CODEC_RAW && t->encoded_size != t->decoded_size))
            return ECW_E_HEADER;
    }
    return ECW_OK;
}

ecw_status ecw_find(const ecw_container *c, const char *name, size_t name_len, ecw_tensor *t) {
    uint32_t i;
    if (c == NULL || name == NULL || t == NULL) return ECW_E_ARG;
    for (i = 0; i < c->n_tensors; i++) {
        ECW_TRY(ecw_tensor_at(c, i, t));
        if (t->name_len == name_len && memcmp(t->name, name, name_len) == 0) return ECW_OK;
    }
    return ECW_E_NOT_FOUND;
}

/* lut payload (FORMAT.md "lut"): 4-byte header, k codebook values, packed or rans indices. */
static ecw_status lut_decode(const uint8_t *src, uint64_t size, uint64_t n, unsigned isz, uint8_t *dst,
                             void *ws, size_t ws_size) {
    unsigned bits, k, idx, codec;
    uint64_t i, book_end;
    const uint8_t *book, *ix;
    uint8_t *dst_idx;
    if (size < ECW_LUT_HEADER_SIZE) return ECW_E_STREAM;
    bits = src[ECW_LUT_HDR_BITS];
    k = ecw_le16(src + ECW_LUT_HDR_K);
    codec = src[ECW_LUT_HDR_INDEX_CODEC];
    if (bits < 1u || bits > 6u || k < 1u || k > 64u || k > (1u << bits) || (codec != 0 && codec != 2))
        return ECW_E_STREAM;
    book = src + ECW_LUT_HEADER_SIZE;
    book_end = ECW_LUT_HEADER_SIZE + (uint64_t)k * isz;
    if (book_end > size) return ECW_E_STREAM;
    ix = src + book_end;
    if (codec == 0) {
        /* packed: index i sits in bits [i*bits, (i+1)*bits), LSB first */
        if (size - book_end != (n * bits + 7u) >> 3) return ECW_E_STREAM;
        for (i = 0; i < n; i++) {
            uint64_t pos = i * bits, byte = pos >> 3;
            unsigned word = ix[byte];
            if ((pos & 7u) + bits > 8u) word |= (unsigned)ix[byte + 1] << 8; /* inside: size checked */
            idx = (word >> (pos & 7u)) & ((1u << bits) - 1u);
            if (idx >= k) return ECW_E_STREAM;
            memcpy(dst + i * isz, book + idx * isz, isz);
        }
        return ECW_OK;
    }
    /* rans indices: decode into the tail of dst, then expand forward. Writing element i ends at
     * byte (i+1)*isz <= n*isz - n + i + 1, so it never overtakes an index not yet read. */
    dst_idx = dst + n * isz - n;
    ECW_TRY(ecw_rans_decode(ix, size - book_end, n, 1u, dst_idx, ws, ws_size));
    for (i = 0; i < n; i++) {
        idx = dst_idx[i];
        if (idx >= k) return ECW_E_STREAM;
        memcpy(dst + i * isz, book + idx * isz, isz);
    }
    return ECW_OK;
}

ecw_status ecw_decode(const ecw_container *c, const ecw_tensor *t, void *dst, size_t dst_size, void *ws,
                      size_t ws_size) {
    const uint8_t *src;
    uint8_t *out = (uint8_t *)dst;
    unsigned isz;
    if (c == NULL || t == NULL || c->data == NULL || (dst == NULL && t->decoded_size != 0)) return ECW_E_ARG;
    if ((uint64_t)dst_size < t->decoded_size) return ECW_E_ARG;
    if (ws == NULL || ws_size < ECW_WORKSPACE_SIZE || ((uintptr_t)ws & 3u) != 0) return ECW_E_ARG;
    /* The entry may come from the caller: check it lies inside the container again. */
    if (t->encoded_size > c->size || t->offset > c->size - t->encoded_size || t->offset < c->data_start)
        return ECW_E_ARG;
    isz = ecw_dtype_size(t->dtype);
    if (isz == 0 || (t->decoded_size & (isz - 1u)) != 0) return ECW_E_ARG; /* isz: 1, 2, 4, 8 */
    src = c->data + t->offset;
    switch (t->codec) {
    case ECW_CODEC_RAW:
        if (t->encoded_size != t->decoded_size) return ECW_E_HEADER;
        if (t->decoded_size) memcpy(out, src, (size_t)t->decoded_size);
        break;
    case ECW_CODEC_ZSTD:
#ifdef ECW_WITH_ZSTD
    {
        size_t r = ZSTD_decompress(out, (size_t)t->decoded_size, src, (size_t)t->encoded_size);
        if (ZSTD_isError(r) || r != t->decoded_size) return ECW_E_STREAM;
        break;
    }
#else
        return ECW_E_CODEC_UNAVAILABLE;
#endif
    case ECW_CODEC_RANS:
        ECW_TRY(ecw_rans_decode(src, t->encoded_size, t->decoded_size, isz, out, ws, ws_size));
        break;
    case ECW_CODEC_LUT:
        ECW_TRY(lut_decode(src, t->encoded_size, t->decoded_size >> (isz == 8u ? 3 : isz >> 1), isz, out, ws, ws_size));
        break;
    default:
        return ECW_E_CODEC;
    }
    return ecw_crc32(0, out, (size_t)t->decoded_size) == t->crc32 ? ECW_OK : ECW_E_CHECKSUM;
}
