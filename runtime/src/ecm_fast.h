/* ecm_fast.h - the hook from the portable kernels (ecm_kernels.c) into the fast paths
 * (ecm_kernels_fast.c, with ecm_kernels_dsp.c on Cortex-M); shared between the runtime's
 * translation units, not part of the API. A build compiles all three source files; on targets
 * without fast paths the other two are empty.
 *
 * ECM_FAST is 1 where this target has fast paths: Armv7E-M / Armv8-M with the DSP extension
 * (Cortex-M4, M7, M33: dual 16-bit MACs) and AArch64 (NEON; dot product instructions where
 * __ARM_FEATURE_DOTPROD). Elsewhere (Cortex-M0+, M3, x86) it is 0 and the portable loops run.
 *   -DECM_PORTABLE          compiles the fast paths out (the reference loops only; smaller)
 *   -DECM_FAST_EMULATE_DSP  host builds only: the DSP path with its instructions emulated in C,
 *                           so that its loops run under the host's sanitizers
 * Stack: the DSP dense path buffers two pixels' patches (ECM_FAST_CHUNK, default 256 elements:
 * 1 KiB) plus ~0.5 KiB of sums and requantization constants; depthwise ~0.5 KiB, plus
 * 1,344 bytes of zero-bordered row buffers on the 3x3 path (ECMF_DW3_COLS columns).
 * Every fast path gives the portable kernel's bytes exactly: the same int32 sums (only the order
 * of the additions differs, and no partial sum can overflow: |sum| <= ECM_MAX_PATCH * 255 * 128),
 * the same saturating bias add and the same requantization. */
#ifndef ECM_FAST_H
#define ECM_FAST_H

#include "ecm.h"

#if defined(ECM_PORTABLE)
#define ECM_FAST 0
#elif defined(ECM_FAST_EMULATE_DSP) || (defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32))
#define ECM_FAST 1
#define ECM_FAST_DSP 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define ECM_FAST 1
#define ECM_FAST_NEON 1
#else
#define ECM_FAST 0
#endif

#if ECM_FAST
/* Called by ecm_conv2d / ecm_fully_connected after their checks passed (arguments valid, shapes
 * consistent): computes the whole output and returns 1, or returns 0 without writing anything
 * when this case has no fast path (grouped convolution, depth multiplier > 1, large depthwise
 * kernels), and the portable loop runs. */
int ecm_conv2d_fast(const ecm_conv_params *p, const ecm_quant *q, ecm_dims in_dims, const int8_t *in,
                    ecm_dims w_dims, const int8_t *weights, const int32_t *bias, ecm_dims out_dims, int8_t *out);
int ecm_fully_connected_fast(const ecm_fc_params *p, const ecm_quant *q, int32_t batches, int32_t in_features,
                             int32_t out_features, const int8_t *in, const int8_t *weights, const int32_t *bias,
                             int8_t *out);
#endif

#endif /* ECM_FAST_H */
