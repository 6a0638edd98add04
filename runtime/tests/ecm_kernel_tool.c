/* ecm_kernel_tool.c - runs ecm_ kernels on cases read from a file (host test harness).
 *
 *   ecm_kernel_tool cases.bin results.bin
 *
 * cases.bin (little-endian): "ECMK", int32 n_cases, then per case
 *   int32 op, int32 n_i32, int32 i32[n_i32], int32 n_i8, int8 i8[n_i8]
 * with the parameters in i32 and the int8 inputs in i8, in the order of run_case below
 * (tests/runtime/test_kernels.py writes them). results.bin gets per case
 *   int32 status, int32 n_bytes, bytes[n_bytes]   (int8 outputs; int32 for op 1)
 * Outputs start filled with 0x5A (see alloc_out). A malformed case stops the tool with exit status 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ecm.h"

enum { OP_REQUANT = 1, OP_CONV = 2, OP_FC = 3, OP_ADD = 4, OP_MAX_POOL = 5, OP_AVG_POOL = 6, OP_MEAN = 7 };
/* Sequence / attention kernels (run_case2). */
enum {
    OP_LUT = 8, OP_MUL = 9, OP_ADD_BCAST = 10, OP_MATMUL = 11, OP_SOFTMAX = 12, OP_LAYER_NORM = 13,
    OP_MEAN_ROWS = 14, OP_SLICE = 15, OP_CONCAT = 16, OP_SELECT = 17, OP_TRANSPOSE = 18, OP_WHERE = 19,
    OP_GATHER = 20, OP_EQUAL = 21
};

typedef struct {
    const int32_t *v;
    int32_t n, at;
} reader;

static int next(reader *r, int32_t *out) {
    if (r->at >= r->n) return 0;
    *out = r->v[r->at++];
    return 1;
}

/* `n` values from r (pointer into its array), or NULL when fewer remain. */
static const int32_t *take(reader *r, int32_t n) {
    const int32_t *p = r->v + r->at;
    if (n < 0 || n > r->n - r->at) return NULL;
    r->at += n;
    return p;
}

static int dims(reader *r, ecm_dims *d) {
    return next(r, &d->n) && next(r, &d->h) && next(r, &d->w) && next(r, &d->c);
}

/* An output buffer filled with 0x5A, so that the tests see whether a rejected call wrote to it. */
static void *alloc_out(size_t n) {
    void *p = malloc(n + 1);
    if (p != NULL) memset(p, 0x5A, n + 1);
    return p;
}

static size_t count(ecm_dims d) {
    if (d.n < 1 || d.h < 1 || d.w < 1 || d.c < 1) return 0;
    return (size_t)d.n * (size_t)d.h * (size_t)d.w * (size_t)d.c;
}

/* Runs one case; its output in *out (malloc'd, *out_size bytes). 0 if the case is malformed. */
static int run_case(int32_t op, reader *r, const int8_t *i8, size_t n_i8, ecm_status *st, void **out,
                    size_t *out_size) {
    int32_t a[24];
    int i;
    *out = NULL;
    *out_size = 0;
    if (op == OP_REQUANT) {
        int32_t n, *res;
        const int32_t *x, *m, *s;
        if (!next(r, &n) || (x = take(r, n)) == NULL || (m = take(r, n)) == NULL || (s = take(r, n)) == NULL) return 0;
        res = (int32_t *)malloc((size_t)n * 4 + 1);
        for (i = 0; i < n; i++) res[i] = ecm_requantize(x[i], m[i], s[i]);
        *st = ECM_OK, *out = res, *out_size = (size_t)n * 4;
        return 1;
    }
    if (op == OP_CONV) {
        ecm_dims din, dw, dout;
        ecm_conv_params p;
        ecm_quant q;
        const int32_t *bias = NULL;
        int32_t has_bias;
        if (!dims(r, &din) || !dims(r, &dw) || !dims(r, &dout)) return 0;
        for (i = 0; i < 13; i++)
            if (!next(r, &a[i])) return 0;
        p.stride_h = a[0], p.stride_w = a[1], p.dilation_h = a[2], p.dilation_w = a[3];
        p.pad_top = a[4], p.pad_left = a[5], p.pad_bottom = a[6], p.pad_right = a[7], p.groups = a[8];
        p.input_zp = a[9], p.output_zp = a[10], p.act_min = a[11], p.act_max = a[12];
        if (!next(r, &q.count) || (q.multiplier = take(r, q.count)) == NULL || (q.shift = take(r, q.count)) == NULL ||
            !next(r, &has_bias) || (has_bias && (bias = take(r, dout.c)) == NULL))
            return 0;
        if (n_i8 != count(din) + count(dw)) return 0;
        *out_size = count(dout);
        *out = alloc_out(*out_size);
        *st = ecm_conv2d(&p, &q, din, i8, dw, i8 + count(din), bias, dout, (int8_t *)*out);
        return 1;
    }
    if (op == OP_FC) {
        ecm_fc_params p;
        ecm_quant q;
        const int32_t *bias = NULL;
        int32_t has_bias;
        for (i = 0; i < 7; i++)
            if (!next(r, &a[i])) return 0;
        p.input_zp = a[3], p.output_zp = a[4], p.act_min = a[5], p.act_max = a[6];
        if (a[0] < 1 || a[1] < 1 || a[2] < 1) return 0;
        if (!next(r, &q.count) || (q.multiplier = take(r, q.count)) == NULL || (q.shift = take(r, q.count)) == NULL ||
            !next(r, &has_bias) || (has_bias && (bias = take(r, a[2])) == NULL))
            return 0;
        if (n_i8 != (size_t)a[0] * a[1] + (size_t)a[2] * a[1]) return 0;
        *out_size = (size_t)a[0] * a[2];
        *out = alloc_out(*out_size);
        *st = ecm_fully_connected(&p, &q, a[0], a[1], a[2], i8, i8 + (size_t)a[0] * a[1], bias, (int8_t *)*out);
        return 1;
    }
    if (op == OP_ADD) {
        ecm_add_params p;
        for (i = 0; i < 13; i++)
            if (!next(r, &a[i])) return 0;
        p.a_zp = a[1], p.b_zp = a[2], p.output_zp = a[3], p.a_multiplier = a[4], p.a_shift = a[5];
        p.b_multiplier = a[6], p.b_shift = a[7], p.output_multiplier = a[8], p.output_shift = a[9];
        p.left_shift = a[10], p.act_min = a[11], p.act_max = a[12];
        if (a[0] < 0 || n_i8 != 2 * (size_t)a[0]) return 0;
        *out_size = (size_t)a[0];
        *out = alloc_out(*out_size);
        *st = ecm_add(&p, (size_t)a[0], i8, i8 + a[0], (int8_t *)*out);
        return 1;
    }
    if (op == OP_MAX_POOL || op == OP_AVG_POOL) {
        ecm_dims din, dout;
        ecm_pool_params p;
        if (!dims(r, &din) || !dims(r, &dout)) return 0;
        for (i = 0; i < 10; i++)
            if (!next(r, &a[i])) return 0;
        p.kernel_h = a[0], p.kernel_w = a[1], p.stride_h = a[2], p.stride_w = a[3];
        p.pad_top = a[4], p.pad_left = a[5], p.pad_bottom = a[6], p.pad_right = a[7], p.act_min = a[8], p.act_max = a[9];
        if (n_i8 != count(din)) return 0;
        *out_size = count(dout);
        *out = alloc_out(*out_size);
        *st = (op == OP_MAX_POOL ? ecm_max_pool2d : ecm_avg_pool2d)(&p, din, i8, dout, (int8_t *)*out);
        return 1;
    }
    if (op == OP_MEAN) {
        ecm_dims din;
        ecm_mean_params p;
        if (!dims(r, &din)) return 0;
        for (i = 0; i < 5; i++)
            if (!next(r, &a[i])) return 0;
        p.input_zp = a[0], p.output_zp = a[1], p.multiplier = a[2], p.shift = a[3], p.divide = a[4];
        if (n_i8 != count(din)) return 0;
        *out_size = count(din) / (size_t)din.h / (size_t)din.w;
        *out = alloc_out(*out_size);
        *st = ecm_mean_hw(&p, din, i8, (int8_t *)*out);
        return 1;
    }
    return 0;
}

/* ecm_bcast from r: ndim, out[ndim], a[ndim], b[ndim]; the element counts of a and b. */
static int bcast(reader *r, ecm_bcast *s, size_t *na, size_t *nb) {
    int32_t k;
    const int32_t *o, *a, *b;
    if (!next(r, &s->ndim) || s->ndim < 1 || s->ndim > ECM_MAX_DIMS || (o = take(r, s->ndim)) == NULL ||
        (a = take(r, s->ndim)) == NULL || (b = take(r, s->ndim)) == NULL)
        return 0;
    *na = *nb = 1;
    for (k = 0; k < s->ndim; k++) {
        if (o[k] < 1 || a[k] < 1 || b[k] < 1) return 0;
        s->out[k] = o[k], s->a[k] = a[k], s->b[k] = b[k];
        *na *= (size_t)a[k], *nb *= (size_t)b[k];
    }
    return 1;
}

static int rows(reader *r, ecm_rows *w) {
    return next(r, &w->outer) && next(r, &w->len) && next(r, &w->inner) && w->outer >= 1 && w->len >= 1 &&
           w->inner >= 1;
}

/* The sequence / attention kernels: as run_case. */
static int run_case2(int32_t op, reader *r, const int8_t *i8, size_t n_i8, ecm_status *st, void **out,
                     size_t *out_size) {
    int32_t a[16];
    int32_t i;
    ecm_rows w;
    if (op == OP_LUT) {
        if (!next(r, &a[0]) || a[0] < 0 || n_i8 != (size_t)a[0] + 256) return 0;
        *out_size = (size_t)a[0];
        *out = alloc_out(*out_size);
        *st = ecm_lut((size_t)a[0], i8, i8 + a[0], (int8_t *)*out);
        return 1;
    }
    if (op == OP_MUL || op == OP_ADD_BCAST) {
        ecm_bcast s;
        size_t na, nb, k;
        if (!bcast(r, &s, &na, &nb)) return 0;
        for (i = 0; i < (op == OP_MUL ? 7 : 13); i++)
            if (!next(r, &a[i])) return 0;
        if (n_i8 != na + nb) return 0;
        for (*out_size = 1, k = 0; k < (size_t)s.ndim; k++) *out_size *= (size_t)s.out[k];
        *out = alloc_out(*out_size);
        if (op == OP_MUL) {
            ecm_mul_params p;
            p.a_zp = a[0], p.b_zp = a[1], p.output_zp = a[2], p.multiplier = a[3], p.shift = a[4];
            p.act_min = a[5], p.act_max = a[6];
            *st = ecm_mul(&p, &s, i8, i8 + na, (int8_t *)*out);
        } else {
            ecm_add_params p;
            p.a_zp = a[1], p.b_zp = a[2], p.output_zp = a[3], p.a_multiplier = a[4], p.a_shift = a[5];
            p.b_multiplier = a[6], p.b_shift = a[7], p.output_multiplier = a[8], p.output_shift = a[9];
            p.left_shift = a[10], p.act_min = a[11], p.act_max = a[12];
            *st = ecm_add_bcast(&p, a[0], &s, i8, i8 + na, (int8_t *)*out);
        }
        return 1;
    }
    if (op == OP_MATMUL) {
        ecm_matmul_params p;
        ecm_matmul_dims d;
        int32_t v[27];
        for (i = 0; i < 27; i++)
            if (!next(r, &v[i])) return 0;
        p.a_zp = v[0], p.b_zp = v[1], p.output_zp = v[2], p.multiplier = v[3], p.shift = v[4];
        p.act_min = v[5], p.act_max = v[6];
        d.batch[0] = v[7], d.batch[1] = v[8], d.m = v[9], d.k = v[10], d.n = v[11];
        for (i = 0; i < 4; i++) d.a_stride[i] = v[12 + i], d.b_stride[i] = v[16 + i], d.out_stride[i] = v[20 + i];
        d.a_size = v[24], d.b_size = v[25], d.out_size = v[26];
        if (d.a_size < 0 || d.b_size < 0 || d.out_size < 0 || n_i8 != (size_t)d.a_size + (size_t)d.b_size) return 0;
        *out_size = (size_t)d.out_size;
        *out = alloc_out(*out_size);
        *st = ecm_batch_matmul(&p, &d, i8, i8 + d.a_size, (int8_t *)*out);
        return 1;
    }
    if (op == OP_SOFTMAX) {
        uint16_t table[256];
        const int32_t *t;
        if (!rows(r, &w) || (t = take(r, 256)) == NULL) return 0;
        for (i = 0; i < 256; i++) table[i] = (uint16_t)t[i];
        if (n_i8 != (size_t)w.outer * w.len * w.inner) return 0;
        *out_size = n_i8;
        *out = alloc_out(*out_size);
        *st = ecm_softmax(w, table, i8, (int8_t *)*out);
        return 1;
    }
    if (op == OP_LAYER_NORM) {
        ecm_layer_norm_params p;
        const int32_t *gamma, *halves;
        int64_t *beta;
        if (!rows(r, &w)) return 0;
        for (i = 0; i < 6; i++)
            if (!next(r, &a[i])) return 0;
        p.input_zp = a[0], p.output_zp = a[1], p.var_shift = a[4], p.shift = a[5];
        p.eps = (int64_t)(((uint64_t)(uint32_t)a[3] << 32) | (uint32_t)a[2]);
        if ((gamma = take(r, w.len)) == NULL || (halves = take(r, 2 * w.len)) == NULL) return 0;
        if (n_i8 != (size_t)w.outer * w.len * w.inner) return 0;
        beta = (int64_t *)malloc((size_t)w.len * 8);
        for (i = 0; i < w.len; i++)
            beta[i] = (int64_t)(((uint64_t)(uint32_t)halves[2 * i + 1] << 32) | (uint32_t)halves[2 * i]);
        *out_size = n_i8;
        *out = alloc_out(*out_size);
        *st = ecm_layer_norm(&p, w, gamma, beta, i8, (int8_t *)*out);
        free(beta);
        return 1;
    }
    if (op == OP_MEAN_ROWS) {
        ecm_mean_params p;
        if (!rows(r, &w)) return 0;
        for (i = 0; i < 5; i++)
            if (!next(r, &a[i])) return 0;
        p.input_zp = a[0], p.output_zp = a[1], p.multiplier = a[2], p.shift = a[3], p.divide = a[4];
        if (n_i8 != (size_t)w.outer * w.len * w.inner) return 0;
        *out_size = (size_t)w.outer * w.inner;
        *out = alloc_out(*out_size);
        *st = ecm_mean_rows(&p, w, i8, (int8_t *)*out);
        return 1;
    }
    if (op == OP_SLICE) {
        if (!rows(r, &w) || !next(r, &a[0]) || !next(r, &a[1]) || !next(r, &a[2]) || a[2] < 1) return 0;
        if (n_i8 != (size_t)w.outer * w.len * w.inner) return 0;
        *out_size = (size_t)w.outer * a[2] * w.inner;
        *out = alloc_out(*out_size);
        *st = ecm_slice(w, a[0], a[1], a[2], i8, (int8_t *)*out);
        return 1;
    }
    if (op == OP_CONCAT) {
        const int32_t *parts;
        int32_t outer, n, total = 0, offset = 0;
        if (!next(r, &outer) || !next(r, &n) || outer < 1 || n < 1 || (parts = take(r, n)) == NULL) return 0;
        for (i = 0; i < n; i++) {
            if (parts[i] < 1) return 0;
            total += parts[i];
        }
        if (n_i8 != (size_t)outer * total) return 0;
        *out_size = n_i8;
        *out = alloc_out(*out_size);
        *st = ECM_OK;
        for (i = 0; i < n && *st == ECM_OK; i++) {
            *st = ecm_concat_part(outer, parts[i], total, offset, i8 + (size_t)outer * offset, (int8_t *)*out);
            offset += parts[i];
        }
        return 1;
    }
    if (op == OP_SELECT) {
        for (i = 0; i < 3; i++)
            if (!next(r, &a[i])) return 0;
        if (a[0] < 0 || n_i8 != (size_t)a[0]) return 0;
        *out_size = n_i8;
        *out = alloc_out(*out_size);
        *st = ecm_select(n_i8, i8, a[1], a[2], (int8_t *)*out);
        return 1;
    }
    if (op == OP_WHERE) {
        ecm_bcast s;
        size_t nc, nx, k;
        if (!bcast(r, &s, &nc, &nx)) return 0;
        for (i = 0; i < 3; i++)
            if (!next(r, &a[i])) return 0;
        if (n_i8 != nc + (a[2] ? nx : 0)) return 0;
        for (*out_size = 1, k = 0; k < (size_t)s.ndim; k++) *out_size *= (size_t)s.out[k];
        *out = alloc_out(*out_size);
        *st = ecm_where(&s, i8, a[2] ? i8 + nc : NULL, a[0], a[1], (int8_t *)*out);
        return 1;
    }
    if (op == OP_GATHER) {
        for (i = 0; i < 3; i++)
            if (!next(r, &a[i])) return 0;
        if (a[0] < 0 || a[1] < 1 || a[2] < 1 || n_i8 != 4 * (size_t)a[0] + (size_t)a[1] * a[2]) return 0;
        *out_size = (size_t)a[0] * a[2];
        *out = alloc_out(*out_size);
        *st = ecm_gather_rows((size_t)a[0], i8, a[1], a[2], i8 + 4 * (size_t)a[0], (int8_t *)*out);
        return 1;
    }
    if (op == OP_EQUAL) {
        for (i = 0; i < 3; i++)
            if (!next(r, &a[i])) return 0;
        if (a[0] < 0 || a[1] < 1 || n_i8 != (size_t)a[0] * a[1]) return 0;
        *out_size = (size_t)a[0];
        *out = alloc_out(*out_size);
        *st = ecm_equal_const((size_t)a[0], i8, a[1], a[2], (int8_t *)*out);
        return 1;
    }
    if (op == OP_TRANSPOSE) {
        const int32_t *shape, *perm;
        if (!next(r, &a[0]) || a[0] < 1 || a[0] > ECM_MAX_DIMS || (shape = take(r, a[0])) == NULL ||
            (perm = take(r, a[0])) == NULL)
            return 0;
        for (*out_size = 1, i = 0; i < a[0]; i++) *out_size *= shape[i] > 0 ? (size_t)shape[i] : 0;
        if (n_i8 != *out_size) return 0;
        *out = alloc_out(*out_size);
        *st = ecm_transpose(a[0], shape, perm, i8, (int8_t *)*out);
        return 1;
    }
    return 0;
}

static int read_i32(FILE *f, int32_t *v) { return fread(v, 4, 1, f) == 1; }

int main(int argc, char **argv) {
    FILE *in, *out;
    char magic[4];
    int32_t n_cases, k;
    if (argc != 3) {
        fprintf(stderr, "usage: %s cases.bin results.bin\n", argv[0]);
        return 2;
    }
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (in == NULL || out == NULL || fread(magic, 1, 4, in) != 4 || memcmp(magic, "ECMK", 4) != 0 ||
        !read_i32(in, &n_cases))
        return 2;
    for (k = 0; k < n_cases; k++) {
        int32_t op, n32, n8, status;
        int32_t *v32 = NULL;
        int8_t *v8 = NULL;
        reader r;
        ecm_status st = ECM_E_ARG;
        void *res;
        size_t res_size;
        int ok;
        if (!read_i32(in, &op) || !read_i32(in, &n32) || n32 < 0) return 2;
        v32 = (int32_t *)malloc((size_t)n32 * 4 + 4);
        if (fread(v32, 4, (size_t)n32, in) != (size_t)n32 || !read_i32(in, &n8) || n8 < 0) return 2;
        v8 = (int8_t *)malloc((size_t)n8 + 1);
        if (fread(v8, 1, (size_t)n8, in) != (size_t)n8) return 2;
        r.v = v32, r.n = n32, r.at = 0;
        ok = op >= OP_LUT ? run_case2(op, &r, v8, (size_t)n8, &st, &res, &res_size)
                          : run_case(op, &r, v8, (size_t)n8, &st, &res, &res_size);
        if (!ok || r.at != r.n) {
            fprintf(stderr, "case %d (op %d): malformed\n", (int)k, (int)op);
            return 2;
        }
        status = (int32_t)st;
        n8 = (int32_t)res_size;
        fwrite(&status, 4, 1, out);
        fwrite(&n8, 4, 1, out);
        fwrite(res, 1, res_size, out);
        free(res);
        free(v32);
        free(v8);
    }
    fclose(in);
    return fclose(out) == 0 ? 0 : 2;
}
