/* ecm_kernels_dsp.S - the inner loops of the Cortex-M DSP fast paths (ecm_fast_dsp.h), Thumb-2.
 *
 * Assembly because they need all 14 registers: gcc's inline asm cannot be promised that many at
 * every optimization level, and at -Os it spills the sums of the C version. Each function is the
 * C loop beside its prototype in ecm_fast_dsp.h (which the host tests run, emulated), AAPCS, in
 * its own section for --gc-sections. Empty unless the target has the DSP extension.
 *
 * Products: SXTB16 sign-extends bytes 0 and 2 of a word into halfwords (ROR #8: bytes 1 and 3);
 * SMLAD adds both halfword products to an int32; SMLABB / SMLATT add the bottom / top one. The
 * activations come as (x - zp) halfword pairs in the same order (ecmf_im2col), so that
 * SMLAD(x02, w02) + SMLAD(x13, w13) is four MACs. */
#if defined(__ARM_FEATURE_DSP) && defined(__thumb2__) && !defined(ECM_PORTABLE)

    .syntax unified
    .thumb

/* void ecm_dsp_pairs(const int32_t *x, const int8_t *w, int32_t groups, ptrdiff_t dw,
 *                    int32_t *acc, int32_t pairs, ptrdiff_t pair_step, int32_t zero);
 * For each of `pairs` channel pairs (weights w and w + dw, then w += pair_step):
 * acc[0..3] (= when zero, else +=) (ch0 px0, ch0 px1, ch1 px0, ch1 px1) over `groups` groups of 4
 * elements, x holding 4 words a group (px0 even, px0 odd, px1 even, px1 odd); acc += 4.
 * 17 instructions a group. */
    .section .text.ecm_dsp_pairs, "ax", %progbits
    .global ecm_dsp_pairs
    .hidden ecm_dsp_pairs
    .type ecm_dsp_pairs, %function
    .thumb_func
    .align 2
ecm_dsp_pairs:
    push    {r4-r11, lr}
    sub     sp, sp, #12             @ [sp] x, [sp, #4] this pair's w, [sp, #8] groups
    str     r0, [sp]
    str     r2, [sp, #8]            @ stack arguments: acc [sp, #48], pairs [sp, #52], pair_step [sp, #56],
.Lp_pair:                           @ zero [sp, #60]
    ldr     r4, [sp, #48]
    ldm     r4, {r5-r8}             @ r5 ch0 px0, r6 ch0 px1, r7 ch1 px0, r8 ch1 px1
    ldr     r4, [sp, #60]
    cbz     r4, .Lp_sums
    movs    r5, #0
    movs    r6, #0
    movs    r7, #0
    movs    r8, #0
.Lp_sums:
    str     r1, [sp, #4]
    ldr     r0, [sp]
    ldr     r2, [sp, #8]
    cbz     r2, .Lp_done
.Lp_group:                          @ invariant: the sums hold every element before r1
    ldm     r0!, {r9-r12}           @ px0 even, px0 odd, px1 even, px1 odd
    ldr     lr, [r1, r3]            @ ch1: 4 weights
    sxtb16  r4, lr
    smlad   r7, r9, r4, r7
    smlad   r8, r11, r4, r8
    sxtb16  lr, lr, ror #8
    smlad   r7, r10, lr, r7
    smlad   r8, r12, lr, r8
    ldr     lr, [r1], #4            @ ch0
    sxtb16  r4, lr
    smlad   r5, r9, r4, r5
    smlad   r6, r11, r4, r6
    sxtb16  lr, lr, ror #8
    smlad   r5, r10, lr, r5
    smlad   r6, r12, lr, r6
    subs    r2, r2, #1
    bne     .Lp_group
.Lp_done:
    ldr     r4, [sp, #48]
    stm     r4!, {r5-r8}
    str     r4, [sp, #48]
    ldr     r1, [sp, #4]
    ldr     r2, [sp, #56]
    add     r1, r1, r2
    ldr     r2, [sp, #52]
    subs    r2, r2, #1
    str     r2, [sp, #52]
    bne     .Lp_pair
    add     sp, sp, #12
    pop     {r4-r11, pc}
    .size ecm_dsp_pairs, . - ecm_dsp_pairs

/* void ecm_dsp_quads(const int32_t *x, const int8_t *w, int32_t groups, int32_t patch,
 *                    int32_t *acc, int32_t quads, int32_t zero);
 * One pixel, 4 channels a step (weights w + j * patch, then w += 4 * patch): acc[0..3] (= when
 * zero, else +=) the 4 sums over `groups` groups, x holding 2 words a group (even, odd); acc += 4.
 * 23 instructions a group. */
    .section .text.ecm_dsp_quads, "ax", %progbits
    .global ecm_dsp_quads
    .hidden ecm_dsp_quads
    .type ecm_dsp_quads, %function
    .thumb_func
    .align 2
ecm_dsp_quads:
    push    {r4-r11, lr}
    sub     sp, sp, #12             @ [sp] x, [sp, #4] this step's w, [sp, #8] groups
    str     r0, [sp]
    str     r2, [sp, #8]            @ stack arguments: acc [sp, #48], quads [sp, #52], zero [sp, #56]
.Lq_step:
    ldr     lr, [sp, #48]
    ldm     lr, {r5-r8}             @ ch0 .. ch3
    ldr     r4, [sp, #56]
    cbz     r4, .Lq_sums
    movs    r5, #0
    movs    r6, #0
    movs    r7, #0
    movs    r8, #0
.Lq_sums:
    str     r1, [sp, #4]
    add     r4, r1, r3, lsl #1
    add     r4, r4, r3              @ r4: ch3's weights
    ldr     r0, [sp]
    ldr     r2, [sp, #8]
    cbz     r2, .Lq_done
.Lq_group:
    ldrd    r9, r10, [r0], #8       @ x even, x odd
    ldr     r11, [r1, r3]           @ ch1
    sxtb16  r12, r11
    smlad   r6, r9, r12, r6
    sxtb16  r11, r11, ror #8
    smlad   r6, r10, r11, r6
    ldr     r11, [r1, r3, lsl #1]   @ ch2
    sxtb16  r12, r11
    smlad   r7, r9, r12, r7
    sxtb16  r11, r11, ror #8
    smlad   r7, r10, r11, r7
    ldr     r11, [r4], #4           @ ch3
    sxtb16  r12, r11
    smlad   r8, r9, r12, r8
    sxtb16  r11, r11, ror #8
    smlad   r8, r10, r11, r8
    ldr     r11, [r1], #4           @ ch0
    sxtb16  r12, r11
    smlad   r5, r9, r12, r5
    sxtb16  r11, r11, ror #8
    smlad   r5, r10, r11, r5
    subs    r2, r2, #1
    bne     .Lq_group
.Lq_done:
    ldr     lr, [sp, #48]
    stm     lr!, {r5-r8}
    str     lr, [sp, #48]
    ldr     r1, [sp, #4]
    add     r1, r1, r3, lsl #2
    ldr     r2, [sp, #52]
    subs    r2, r2, #1
    str     r2, [sp, #52]
    bne     .Lq_step
    add     sp, sp, #12
    pop     {r4-r11, pc}
    .size ecm_dsp_quads, . - ecm_dsp_quads

/* void ecm_dsp_dw(const int8_t *x, const int32_t *wp, const ecmf_dw_args *a, int32_t *acc);
 * a: {rows, cols, x_col, x_row, w_row_adj, nzp, npix, x_pix} (ecm_fast_dsp.h). Depthwise, 4
 * channels of npix pixels with the same window, the next pixel's window x_pix bytes on:
 * acc[4p + j] = sum over rows x cols taps of (x_j - zp) * w_j. x advances by x_col a tap, by
 * x_row a row; wp (2 words a tap: (w0, w2), (w1, w3)) by 8 bytes a tap and w_row_adj more a row.
 * 11 instructions a tap; rows of 3 taps: 27 a row. */
    .section .text.ecm_dsp_dw, "ax", %progbits
    .global ecm_dsp_dw
    .hidden ecm_dsp_dw
    .type ecm_dsp_dw, %function
    .thumb_func
    .align 2
ecm_dsp_dw:
    push    {r4-r11, lr}
    sub     sp, sp, #20             @ [sp] a, [sp, #4] acc, [sp, #8] x, [sp, #12] wp, [sp, #16] pixels left
    str     r2, [sp]
    str     r3, [sp, #4]
    str     r0, [sp, #8]
    str     r1, [sp, #12]
    ldr     r4, [r2, #24]
    str     r4, [sp, #16]
    ldr     r3, [r2, #8]            @ x_col
    ldr     r2, [r2, #20]           @ (-zp, -zp)
.Ld_pixel:
    movs    r6, #0
    movs    r7, #0
    movs    r8, #0
    movs    r9, #0
    ldr     lr, [sp]
    ldr     r5, [lr]                @ rows
    cmp     r5, #0
    beq     .Ld_done
    ldr     r4, [lr, #4]            @ cols
    cmp     r4, #3
    bne     .Ld_row
    ldr     r10, [lr, #16]
    cmp     r10, #0                 @ rows of 3 taps that are whole kernel rows (kw == 3)
    bne     .Ld_row
    ldr     r4, [lr, #12]           @ r4 = x_row, no column loop
.Ld_row3:
    ldr     r10, [r0]
    sxtab16 r11, r2, r10
    sxtab16 r10, r2, r10, ror #8
    ldrd    r12, lr, [r1], #8
    smlabb  r6, r11, r12, r6
    smlatt  r8, r11, r12, r8
    smlabb  r7, r10, lr, r7
    smlatt  r9, r10, lr, r9
    ldr     r10, [r0, r3]
    sxtab16 r11, r2, r10
    sxtab16 r10, r2, r10, ror #8
    ldrd    r12, lr, [r1], #8
    smlabb  r6, r11, r12, r6
    smlatt  r8, r11, r12, r8
    smlabb  r7, r10, lr, r7
    smlatt  r9, r10, lr, r9
    ldr     r10, [r0, r3, lsl #1]
    sxtab16 r11, r2, r10
    sxtab16 r10, r2, r10, ror #8
    ldrd    r12, lr, [r1], #8
    smlabb  r6, r11, r12, r6
    smlatt  r8, r11, r12, r8
    smlabb  r7, r10, lr, r7
    smlatt  r9, r10, lr, r9
    add     r0, r0, r4
    subs    r5, r5, #1
    bne     .Ld_row3
    b       .Ld_done
.Ld_row:                            @ r4: cols (>= 1)
    ldr     r10, [r0]
    add     r0, r0, r3
    sxtab16 r11, r2, r10            @ (x0 - zp, x2 - zp)
    sxtab16 r10, r2, r10, ror #8    @ (x1 - zp, x3 - zp)
    ldrd    r12, lr, [r1], #8       @ (w0, w2), (w1, w3)
    smlabb  r6, r11, r12, r6
    smlatt  r8, r11, r12, r8
    smlabb  r7, r10, lr, r7
    smlatt  r9, r10, lr, r9
    subs    r4, r4, #1
    bne     .Ld_row
    ldr     lr, [sp]
    ldr     r4, [lr, #4]            @ cols
    mul     r10, r4, r3
    ldr     r12, [lr, #12]
    sub     r12, r12, r10           @ x_row - cols * x_col
    add     r0, r0, r12
    ldr     r12, [lr, #16]
    add     r1, r1, r12
    subs    r5, r5, #1
    bne     .Ld_row
.Ld_done:
    ldr     lr, [sp, #4]
    stm     lr!, {r6-r9}
    str     lr, [sp, #4]
    ldr     lr, [sp]
    ldr     r12, [lr, #28]          @ x_pix
    ldr     r0, [sp, #8]
    add     r0, r0, r12
    str     r0, [sp, #8]
    ldr     r1, [sp, #12]
    ldr     r4, [sp, #16]
    subs    r4, r4, #1
    str     r4, [sp, #16]
    bne     .Ld_pixel
    add     sp, sp, #20
    pop     {r4-r11, pc}
    .size ecm_dsp_dw, . - ecm_dsp_dw

/* void ecm_dsp_requant(const int32_t *acc, int8_t *y, ptrdiff_t y_pair, int32_t n, const ecmf_rq_args *a);
 * a: {ch, lo, hi, zp, npix, y_step, full} with ch n x {mult, e, h, bias}: e = -shift >= 1, h = 2^(e-1)
 * (ecm_fast_dsp.h). y_pair == 0: y[j] = the output byte of sum acc[j], then for each further pixel
 * (npix in all) y += y_step and acc += n; else (npix 1) y[j] of acc[2j] and y[y_pair + j] of
 * acc[2j+1].
 * ecm_requantize with shift <= -1 (see ecmf_scale_below_half): r = floor((x m + 2^30) / 2^31) is
 * SMMLAR(2x, m) when 2x fits int32, and SMMLAR's accumulator adds h + s (s = -1 for x < 0), so the
 * rounding shift is one ASR by e; when 2x overflows (|x| >= 2^30), the 64-bit form with SMLAL.
 * 13 instructions an output (8 when the act range is all of int8), 4 a channel (+ 3 for the
 * second pixel). */
    .section .text.ecm_dsp_requant, "ax", %progbits
    .global ecm_dsp_requant
    .hidden ecm_dsp_requant
    .type ecm_dsp_requant, %function
    .thumb_func
    .align 2

/* one output: x in r12 -> clamp -> byte; r8 mult, r9 e, r10 h, r11 bias, r5 lo, r6 hi, r7 zp.
 * full: the act range is all of int8, so the clamp is SSAT after the zero point is added (|r| <
 * 2^30: r + zp does not wrap). */
.macro ECM_RQ_OUT tag, full
    qadd    r12, r12, r11           @ x = acc + bias, saturating
    add     lr, r10, r12, asr #31   @ h + s
    adds    r12, r12, r12           @ 2x
    bvs     .Lrq_big\tag
    smmlar  r12, r12, r8, lr        @ r + h + s
    asr     r12, r12, r9
.Lrq_clamp\tag:
.if \full
    add     r12, r12, r7
    ssat    r12, #8, r12
.else
    cmp     r12, r5
    it      lt
    movlt   r12, r5
    cmp     r12, r6
    it      gt
    movgt   r12, r6
    add     r12, r12, r7
.endif
.endm

/* |x| >= 2^30: P = x m + 2^30 + (h + s) 2^31 in 64 bits, the result its high word >> (e - 1). */
.macro ECM_RQ_BIG tag
.Lrq_big\tag:
    rrx     r12, r12                @ x again (the carry of x + x is its sign)
    push    {r2, r3}
    lsls    r2, lr, #31
    orr     r2, r2, #0x40000000
    lsr     lr, lr, #1
    smlal   r2, lr, r12, r8
    sub     r2, r9, #1
    asr     r12, lr, r2
    pop     {r2, r3}
    b       .Lrq_clamp\tag
.endm

/* the pixel and channel loops, for one kind of clamp */
.macro ECM_RQ_LOOP full
.Lrq_pixel\full:
    ldr     r4, [sp, #48]
    ldr     r4, [r4]                @ ch
.Lrq_channel\full:
    ldm     r4!, {r8-r11}           @ mult, e, h, bias
    cbz     r2, .Lrq_one\full
    ldr     r12, [r0, #4]           @ the second pixel
    ECM_RQ_OUT b\full, \full
    strb    r12, [r1, r2]
    ldr     r12, [r0], #8
    b       .Lrq_first\full
.Lrq_one\full:
    ldr     r12, [r0], #4
.Lrq_first\full:
    ECM_RQ_OUT a\full, \full
    strb    r12, [r1], #1
    subs    r3, r3, #1
    bne     .Lrq_channel\full
    ldr     r3, [sp, #4]
    subs    r3, r3, #1
    beq     .Lrq_done
    str     r3, [sp, #4]
    ldr     r3, [sp, #48]
    ldr     r3, [r3, #20]           @ y_step
    ldr     r1, [sp, #8]
    add     r1, r1, r3
    str     r1, [sp, #8]
    ldr     r3, [sp]
    b       .Lrq_pixel\full
.endm

ecm_dsp_requant:
    push    {r4-r11, lr}
    sub     sp, sp, #12             @ [sp] n, [sp, #4] pixels left, [sp, #8] y of this pixel
    ldr     r4, [sp, #48]           @ a
    ldr     r5, [r4, #16]
    str     r5, [sp, #4]
    str     r3, [sp]
    str     r1, [sp, #8]
    ldr     r5, [r4, #4]            @ lo
    ldr     r6, [r4, #8]            @ hi
    ldr     r7, [r4, #12]           @ zp
    cmp     r3, #0
    beq     .Lrq_done
    ldr     r4, [r4, #24]           @ full
    cmp     r4, #0
    bne     .Lrq_pixel1
    ECM_RQ_LOOP 0
    ECM_RQ_LOOP 1
.Lrq_done:
    add     sp, sp, #12
    pop     {r4-r11, pc}
    ECM_RQ_BIG a0
    ECM_RQ_BIG b0
    ECM_RQ_BIG a1
    ECM_RQ_BIG b1
    .size ecm_dsp_requant, . - ecm_dsp_requant

#endif
