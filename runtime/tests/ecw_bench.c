/* ecw_bench.c - decode throughput: ecw_bench file.ecw reps [--ref] -> "<bytes> <seconds> <crc_seconds>":
 * the best of `reps` passes decoding every tensor with ecw_decode (CRC-32 check included), and the
 * best of `reps` passes of ecw_crc32 alone over the same decoded sizes (its share of the first). */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ecw.h"

int main(int argc, char **argv) {
    FILE *f;
    long size;
    uint8_t *data, *out;
    void *ws;
    size_t ws_size, biggest = 0;
    ecw_container c;
    ecw_tensor t;
    uint32_t i;
    int reps, r;
    double bytes = 0, best = 1e30, best_crc = 1e30;
    struct timespec a, b;
    if (argc < 3) return 2;
    reps = atoi(argv[2]);
    f = fopen(argv[1], "rb");
    if (!f) return 2;
    fseek(f, 0, SEEK_END); size = ftell(f); fseek(f, 0, SEEK_SET);
    data = malloc((size_t)size);
    if (fread(data, 1, (size_t)size, f) != (size_t)size) return 2;
    ws_size = (argc > 3 && strcmp(argv[3], "--ref") == 0) ? ECW_WORKSPACE_SIZE : ECW_FAST_WORKSPACE_SIZE;
    ws = malloc(ws_size);
    if (ecw_open(&c, data, (size_t)size) != ECW_OK) return 1;
    for (i = 0; i < c.n_tensors; i++) {
        ecw_tensor_at(&c, i, &t);
        if (t.decoded_size > biggest) biggest = (size_t)t.decoded_size;
        bytes += (double)t.decoded_size;
    }
    out = malloc(biggest + 1);
    for (r = 0; r < reps; r++) { /* best of reps: the machine is shared */
        double s;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (i = 0; i < c.n_tensors; i++) {
            ecw_tensor_at(&c, i, &t);
            if (ecw_decode(&c, &t, out, biggest, ws, ws_size) != ECW_OK) return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
        if (s < best) best = s;
    }
    for (r = 0; r < reps; r++) {
        double s;
        volatile uint32_t sink = 0;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (i = 0; i < c.n_tensors; i++) {
            ecw_tensor_at(&c, i, &t);
            sink ^= ecw_crc32(0, out, (size_t)t.decoded_size);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
        if (s < best_crc) best_crc = s;
    }
    printf("%.0f %.6f %.6f\n", bytes, best, best_crc);
    return 0;
}
