/* ecw_tool.c - test driver for Linux builds (host, aarch64 under qemu-aarch64).
 *
 *   ecw_tool [--ref] container.ecw [out_dir]
 *   ecw_tool --crc32 file      (ecw_crc32 of the file's bytes from every offset 0..min(size, 200))
 *
 * Opens the container and decodes every tensor (reference decoder with --ref, fast path
 * otherwise). Prints "open <STATUS>", then per tensor "<index> <name> <STATUS> <crc32> <fnv1a64>",
 * the hashes computed here over the decoded bytes; with out_dir, writes them to out_dir/<index>.bin.
 * Exit status 0 when everything decodes. The test driver may allocate; the library never does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ecw.h"

static uint64_t fnv1a64(const uint8_t *p, uint64_t n) {
    uint64_t h = 1469598103934665603ull;
    while (n--) h = (h ^ *p++) * 1099511628211ull;
    return h;
}

int main(int argc, char **argv) {
    int ref = 0, crc_only = 0, argi = 1, rc = 0;
    FILE *f;
    long size;
    uint8_t *data;
    void *ws;
    size_t ws_size;
    ecw_container c;
    ecw_status s;
    uint32_t i;
    if (argi < argc && strcmp(argv[argi], "--ref") == 0) { ref = 1; argi++; }
    if (argi < argc && strcmp(argv[argi], "--crc32") == 0) { crc_only = 1; argi++; }
    if (argi >= argc) { fprintf(stderr, "usage: ecw_tool [--ref] file.ecw [out_dir]\n"); return 2; }
    f = fopen(argv[argi], "rb");
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "cannot read %s\n", argv[argi]);
        return 2;
    }
    data = (uint8_t *)malloc((size_t)size + 1);
    if (data == NULL || fread(data, 1, (size_t)size, f) != (size_t)size) return 2;
    fclose(f);
    if (crc_only) { /* every start offset: lengths and alignments around the 16- and 64-byte paths */
        long k;
        for (k = 0; k <= size && k <= 200; k++)
            printf("%08x\n", (unsigned)ecw_crc32(0, data + k, (size_t)(size - k)));
        return 0;
    }
    ws_size = ref ? ECW_WORKSPACE_SIZE : ECW_FAST_WORKSPACE_SIZE;
    ws = malloc(ws_size);
    s = ecw_open(&c, data, (size_t)size);
    printf("open %s\n", ecw_status_name(s));
    if (s != ECW_OK) return 1;
    for (i = 0; i < c.n_tensors; i++) {
        ecw_tensor t;
        uint8_t *out;
        ecw_status ds;
        s = ecw_tensor_at(&c, i, &t);
        if (s != ECW_OK) { printf("%u ? %s\n", (unsigned)i, ecw_status_name(s)); rc = 1; continue; }
        out = (uint8_t *)malloc((size_t)t.decoded_size + 1);
        ds = ecw_decode(&c, &t, out, (size_t)t.decoded_size, ws, ws_size);
        printf("%u %.*s %s %08x %016llx\n", (unsigned)i, (int)t.name_len, t.name, ecw_status_name(ds),
               (unsigned)ecw_crc32(0, out, (size_t)t.decoded_size),
               (unsigned long long)fnv1a64(out, t.decoded_size));
        if (ds != ECW_OK) rc = 1;
        if (argi + 1 < argc && ds == ECW_OK) {
            char path[4096];
            FILE *o;
            snprintf(path, sizeof path, "%s/%u.bin", argv[argi + 1], (unsigned)i);
            o = fopen(path, "wb");
            if (o == NULL || fwrite(out, 1, (size_t)t.decoded_size, o) != (size_t)t.decoded_size) rc = 2;
            if (o) fclose(o);
        }
        free(out);
    }
    free(ws);
    free(data);
    return rc;
}
