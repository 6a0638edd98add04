/* ecw_crc32.c - CRC-32 (reflected 0xEDB88320, zlib/PNG). Default: 16-entry nibble table (64
 * bytes, for microcontrollers); -DECW_CRC_TABLE256 uses 8 KiB of byte tables and slicing-by-8
 * (Intel's method: 8 bytes per step through 8 independent lookups; ~5x the byte-at-a-time
 * loop on x86-64, whose one-lookup-per-byte dependency chain capped decode+check near 530 MB/s). */
#include "ecw_internal.h"

#ifdef ECW_CRC_TABLE256
#include "ecw_crc32_table.h" /* static const uint32_t ecw_crc_table[8][256], gen_crc32_table.py */

uint32_t ecw_crc32(uint32_t crc, const void *p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    crc = ~crc;
    for (; n >= 8u; n -= 8u, b += 8) { /* byte loads: any alignment, either endianness */
        uint32_t lo = crc ^ ecw_le32(b), hi = ecw_le32(b + 4);
        crc = ecw_crc_table[7][lo & 0xffu] ^ ecw_crc_table[6][(lo >> 8) & 0xffu] ^
              ecw_crc_table[5][(lo >> 16) & 0xffu] ^ ecw_crc_table[4][lo >> 24] ^
              ecw_crc_table[3][hi & 0xffu] ^ ecw_crc_table[2][(hi >> 8) & 0xffu] ^
              ecw_crc_table[1][(hi >> 16) & 0xffu] ^ ecw_crc_table[0][hi >> 24];
    }
    while (n--) crc = ecw_crc_table[0][(crc ^ *b++) & 0xffu] ^ (crc >> 8);
    return ~crc;
}
#else
static const uint32_t ecw_crc_nibble[16] = {
    0x00000000u, 0x1db71064u, 0x3b6e20c8u, 0x26d930acu, 0x76dc4190u, 0x6b6b51f4u, 0x4db26158u, 0x5005713cu,
    0xedb88320u, 0xf00f9344u, 0xd6d6a3e8u, 0xcb61b38cu, 0x9b64c2b0u, 0x86d3d2d4u, 0xa00ae278u, 0xbdbdf21cu};

uint32_t ecw_crc32(uint32_t crc, const void *p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    crc = ~crc;
    while (n--) {
        crc ^= *b++;
        crc = ecw_crc_nibble[crc & 15u] ^ (crc >> 4);
        crc = ecw_crc_nibble[crc & 15u] ^ (crc >> 4);
    }
    return ~crc;
}
#endif
