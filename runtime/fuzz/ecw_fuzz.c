/* ecw_fuzz.c - libFuzzer target: open and decode every tensor of arbitrary bytes, with the
 * reference and the fast decoder. Inputs whose first byte is odd get their table CRC and entry
 * CRCs recomputed first, so mutations reach the entry and payload checks behind the CRC gates. */
#include <stdlib.h>
#include <string.h>

#include "ecw.h"

#define FUZZ_MAX_DECODED (16u << 20)

static uint8_t ws[ECW_FAST_WORKSPACE_SIZE] __attribute__((aligned(8)));

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void wr32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24); }

static void run(const uint8_t *data, size_t size) {
    ecw_container c;
    uint32_t i;
    int pass;
    if (ecw_open(&c, data, size) != ECW_OK) return;
    for (i = 0; i < c.n_tensors; i++) {
        ecw_tensor t;
        uint8_t *out;
        /* Tensors up to FUZZ_MAX_DECODED are decoded: a payload of at most -max_len bytes reaches
         * the format's ratio limits (FORMAT.md "Errors") well past 64 KiB; beyond 16 MiB an
         * execution would be dominated by memset-speed output, not by parsing. */
        if (ecw_tensor_at(&c, i, &t) != ECW_OK || t.decoded_size > FUZZ_MAX_DECODED) continue;
        out = (uint8_t *)malloc((size_t)t.decoded_size + 1); /* exact size: ASan catches overruns */
        for (pass = 0; pass < 2; pass++)
            (void)ecw_decode(&c, &t, out, (size_t)t.decoded_size, ws, pass ? sizeof ws : ECW_WORKSPACE_SIZE);
        free(out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *copy;
    run(data, size);
    if (size < 32 || (data[0] & 1u) == 0) return 0;
    /* Re-seal: the first byte only picks the mode; put the magic back and fix the table CRC. */
    copy = (uint8_t *)malloc(size);
    memcpy(copy, data, size);
    memcpy(copy, "ECW1", 4);
    {
        uint64_t n = rd32(copy + 8), meta = rd32(copy + 12), end = 32 + 80 * n + meta;
        if (end <= size) wr32(copy + 28, ecw_crc32(ecw_crc32(0, copy, 28), copy + 32, (size_t)(end - 32)));
    }
    run(copy, size);
    free(copy);
    return 0;
}
