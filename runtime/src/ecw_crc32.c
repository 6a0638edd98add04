/* ecw_crc32.c - CRC-32 (reflected 0xEDB88320, zlib/PNG). Default: 16-entry nibble table (64
 * bytes, for microcontrollers); -DECW_CRC_TABLE256 uses 8 KiB of byte tables and slicing-by-8
 * (Intel's method: 8 bytes per step through 8 independent lookups; ~5x the byte-at-a-time
 * loop on x86-64, whose one-lookup-per-byte dependency chain capped decode+check near 530 MB/s),
 * and on x86-64 CPUs with PCLMULQDQ, carry-less multiplication folding (Gopal et al., "Fast CRC
 * Computation for Generic Polynomials Using PCLMULQDQ", Intel 2009; the constants of the Linux
 * kernel's crc32-pclmul and zlib's crc32_simd): 64 bytes a step through four independent folds,
 * ~5x slicing-by-8, which made the check half the time of a decode+check. ARMv8 builds with the
 * CRC extension (-mcpu=cortex-a72, as the rpi4 bundle's build.sh passes) use its CRC32X
 * instruction, 8 bytes a step. */
#include "ecw_internal.h"

#ifdef ECW_CRC_TABLE256
#include "ecw_crc32_table.h" /* static const uint32_t ecw_crc_table[8][256], gen_crc32_table.py */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ECW_CRC_CLMUL 1

/* The CRC state (not inverted) after `n` bytes, n >= 64 and a multiple of 16. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_clmul(uint32_t crc, const uint8_t *b, size_t n) {
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4), k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
    const __m128i k5 = _mm_set_epi64x(0, 0x0163cd6124), poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
    const __m128i low32 = _mm_setr_epi32(-1, 0, -1, 0);
    __m128i x1 = _mm_loadu_si128((const __m128i *)b), x2 = _mm_loadu_si128((const __m128i *)(b + 16));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(b + 32)), x4 = _mm_loadu_si128((const __m128i *)(b + 48)), t;
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    for (b += 64, n -= 64; n >= 64; b += 64, n -= 64) { /* four 128-bit lanes, each folded 512 bits on */
        x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k1k2, 0x00), _mm_clmulepi64_si128(x1, k1k2, 0x11)),
                           _mm_loadu_si128((const __m128i *)b));
        x2 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x2, k1k2, 0x00), _mm_clmulepi64_si128(x2, k1k2, 0x11)),
                           _mm_loadu_si128((const __m128i *)(b + 16)));
        x3 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x3, k1k2, 0x00), _mm_clmulepi64_si128(x3, k1k2, 0x11)),
                           _mm_loadu_si128((const __m128i *)(b + 32)));
        x4 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x4, k1k2, 0x00), _mm_clmulepi64_si128(x4, k1k2, 0x11)),
                           _mm_loadu_si128((const __m128i *)(b + 48)));
    }
    /* fold the four lanes into one (128 bits on each time), then the 16-byte rest */
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x00), _mm_clmulepi64_si128(x1, k3k4, 0x11)), x2);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x00), _mm_clmulepi64_si128(x1, k3k4, 0x11)), x3);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x00), _mm_clmulepi64_si128(x1, k3k4, 0x11)), x4);
    for (; n >= 16; b += 16, n -= 16)
        x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x00), _mm_clmulepi64_si128(x1, k3k4, 0x11)),
                           _mm_loadu_si128((const __m128i *)b));
    /* 128 -> 64 bits, then Barrett reduction to 32 */
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), _mm_clmulepi64_si128(x1, k3k4, 0x10));
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5, 0x00), _mm_srli_si128(x1, 4));
    t = _mm_and_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), poly, 0x10), low32);
    x1 = _mm_xor_si128(x1, _mm_clmulepi64_si128(t, poly, 0x00));
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

/* Whether this CPU runs crc_clmul. Benign race: every thread computes the same value. */
static int have_clmul(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    }
    return cached;
}
#endif

#if defined(__aarch64__) && defined(__ARM_FEATURE_CRC32) && !defined(__ARM_BIG_ENDIAN)
#include <arm_acle.h>
#include <string.h>
#define ECW_CRC_ARM 1
#endif

uint32_t ecw_crc32(uint32_t crc, const void *p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    crc = ~crc;
#ifdef ECW_CRC_ARM
    for (; n >= 8u; n -= 8u, b += 8) {
        uint64_t v;
        memcpy(&v, b, 8); /* any alignment */
        crc = __crc32d(crc, v);
    }
    while (n--) crc = __crc32b(crc, *b++);
    return ~crc;
#endif
#ifdef ECW_CRC_CLMUL
    if (n >= 64u && have_clmul()) {
        size_t whole = n & ~(size_t)15u;
        crc = crc_clmul(crc, b, whole);
        b += whole;
        n -= whole;
    }
#endif
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
