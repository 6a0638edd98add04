/* ecw_demo.c - decode every tensor of the embedded container (ecw_weights.c) into one static
 * buffer with the reference decoder, and print "<index> <name> <STATUS> <crc32> <fnv1a64>" per
 * tensor (hashes computed here over the decoded bytes). Returns 0 when all decode. For
 * microcontrollers (printf over semihosting or a UART) and Linux boards alike. */
#include <stdio.h>

#include "ecw.h"
#include "ecw_weights.h"

static uint8_t out_buf[ECW_WEIGHTS_MAX_TENSOR_BYTES + 1];
static uint32_t workspace[ECW_WORKSPACE_SIZE / 4];

static uint32_t fnv_lo(const uint8_t *p, uint32_t n, uint32_t *hi) {
    uint64_t h = 1469598103934665603ull;
    while (n--) h = (h ^ *p++) * 1099511628211ull;
    *hi = (uint32_t)(h >> 32);
    return (uint32_t)h;
}

int main(void) {
    ecw_container c;
    ecw_status s = ecw_open(&c, ecw_weights, ecw_weights_size);
    uint32_t i;
    int rc = 0;
    printf("open %s\n", ecw_status_name(s));
    if (s != ECW_OK) return 1;
    for (i = 0; i < c.n_tensors; i++) {
        ecw_tensor t;
        uint32_t hi, lo;
        s = ecw_tensor_at(&c, i, &t);
        if (s == ECW_OK) s = ecw_decode(&c, &t, out_buf, sizeof out_buf, workspace, sizeof workspace);
        lo = fnv_lo(out_buf, (uint32_t)t.decoded_size, &hi);
        printf("%u %.*s %s %08lx %08lx%08lx\n", (unsigned)i, (int)t.name_len, t.name, ecw_status_name(s),
               (unsigned long)ecw_crc32(0, out_buf, (size_t)t.decoded_size), (unsigned long)hi, (unsigned long)lo);
        if (s != ECW_OK) rc = 1;
    }
    printf("done %d\n", rc);
    return rc;
}
