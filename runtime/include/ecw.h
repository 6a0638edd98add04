/* ecw.h - decoder for the .ecw weight container (format: runtime/FORMAT.md).
 *
 * C99, no allocation: the caller owns the container bytes, the output buffer and a workspace of
 * ECW_WORKSPACE_SIZE bytes (reference decoder, fits microcontrollers) or ECW_FAST_WORKSPACE_SIZE
 * bytes (table-driven fast path, AVX2 on x86-64). Every function returns an ecw_status; nothing is read
 * before its bounds are checked.
 *
 *   ecw_container c;  ecw_tensor t;
 *   if (ecw_open(&c, data, size) != ECW_OK) ...;
 *   for (uint32_t i = 0; i < c.n_tensors; i++) {
 *       ecw_tensor_at(&c, i, &t);
 *       ecw_decode(&c, &t, buf, sizeof buf, ws, sizeof ws);   // checks the CRC-32
 *   }
 */
#ifndef ECW_H
#define ECW_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ECW_OK = 0,
    ECW_E_ARG = -1,               /* a caller argument is invalid (buffer too small, index) */
    ECW_E_MAGIC = -2,             /* not an .ecw container */
    ECW_E_VERSION = -3,           /* unknown format version */
    ECW_E_TRUNCATED = -4,         /* fewer bytes than the header says */
    ECW_E_HEADER = -5,            /* a header/table field is out of range */
    ECW_E_CODEC = -6,             /* unknown codec id */
    ECW_E_CODEC_UNAVAILABLE = -7, /* known codec not built in (zstd without ECW_WITH_ZSTD) */
    ECW_E_STREAM = -8,            /* malformed payload */
    ECW_E_CHECKSUM = -9,          /* CRC-32 mismatch (table or decoded tensor) */
    ECW_E_NOT_FOUND = -10         /* no tensor of that name */
} ecw_status;

enum { ECW_CODEC_RAW = 0, ECW_CODEC_ZSTD = 1, ECW_CODEC_RANS = 2, ECW_CODEC_LUT = 3 };
enum { ECW_MAX_NDIM = 6 };

/* Workspace sizes in bytes (4-byte aligned). The reference decoder keeps one cumulative
 * frequency table (257 x u16) and 64 lane states; the fast path adds a 2^12-slot decode table.
 *
 * Stack: the fast path (ws_size >= ECW_FAST_WORKSPACE_SIZE) also takes ECW_FAST_STACK_BYTES of
 * stack in its block decoder (a 4096-byte staging buffer for outputs not in stream order and a
 * 4352-byte zero-padded copy of a block's tail), about 8.4 KB beyond the caller's frames. The
 * reference decoder (a smaller workspace, or a build with -DECW_NO_FAST as for microcontrollers)
 * needs no such buffers: size a microcontroller's stack for the reference path, or reserve 8.4 KB
 * more before handing the fast workspace. */
#define ECW_WORKSPACE_SIZE 772u
#define ECW_FAST_WORKSPACE_SIZE (ECW_WORKSPACE_SIZE + 4u * 4100u)
#define ECW_FAST_STACK_BYTES (4096u + 4096u + 256u)

typedef struct {
    const uint8_t *data; /* the whole container */
    uint64_t size;       /* file_size from the header */
    uint32_t n_tensors;
    uint64_t data_start; /* first byte a payload may use */
    const uint8_t *meta;
    uint32_t meta_size;
} ecw_container;

typedef struct {
    const char *name; /* not NUL-terminated: use name_len */
    uint16_t name_len;
    uint8_t dtype, codec, ndim, layout, quant_kind, quant_axis;
    uint32_t dims[ECW_MAX_NDIM];
    uint32_t quant_count;
    const uint8_t *quant; /* quant_count float32 scales, then int32 zero points, little-endian */
    uint64_t offset, encoded_size, decoded_size;
    uint32_t crc32;
} ecw_tensor;

/* Validate the header, the table CRC and every entry. */
ecw_status ecw_open(ecw_container *c, const void *data, size_t size);
/* Entry `index` (validated again: cheap, and the container may be shared). */
ecw_status ecw_tensor_at(const ecw_container *c, uint32_t index, ecw_tensor *t);
/* Entry named `name` (length `name_len`). */
ecw_status ecw_find(const ecw_container *c, const char *name, size_t name_len, ecw_tensor *t);
/* Decode `t` into dst[0 .. t->decoded_size) and check its CRC-32. Uses the fast path when
 * ws_size >= ECW_FAST_WORKSPACE_SIZE, the reference decoder otherwise. */
ecw_status ecw_decode(const ecw_container *c, const ecw_tensor *t, void *dst, size_t dst_size,
                      void *ws, size_t ws_size);
/* CRC-32 (zlib): crc = ecw_crc32(0, p, n) for a whole buffer. */
uint32_t ecw_crc32(uint32_t crc, const void *p, size_t n);
/* Item size of a dtype code, 0 if unknown. */
unsigned ecw_dtype_size(uint8_t dtype);
/* Name of a status, e.g. "ECW_E_STREAM". */
const char *ecw_status_name(ecw_status s);

#ifdef __cplusplus
}
#endif
#endif /* ECW_H */
