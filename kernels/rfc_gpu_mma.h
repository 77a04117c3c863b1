/* Tensor-core matrix products for the prefill matmul (templates/gpu_matmul_mma.hip.j2) and the
 * prefill attention (templates/gpu_attention_mma.hip.j2): the subset of CUDA's nvcuda::wmma
 * those kernels use, under one name on every platform that has it.
 *
 *   rfc_wmma::fragment<use, 16, 16, 16, T[, layout]>   matrix_a (row_major) / matrix_b (row_major
 *                                                        or col_major) of rfc_mma_half,
 *                                                        accumulator of float
 *   rfc_wmma::fill_fragment, load_matrix_sync, mma_sync, store_matrix_sync (mem_row_major;
 *                                                        accumulators load and store as floats)
 *   rfc_mma_half, RFC_MMA_HALF(f)                       a half in shared memory; float -> half
 *                                                        rounded to nearest even
 *   rfc_wmma_scale_rows(acc, alpha, stage, lane)         row r of an accumulator times alpha[r]
 *
 * Which lane holds which element of a fragment is left opaque, as WMMA leaves it: the
 * kernel only loads, multiplies and stores whole tiles through memory, so the emulator
 * (tests/kernels/gpu_emu.h) can implement the same calls exactly with a whole tile per lane.
 * Only targets with fp16 tensor cores (Target.wmma_f16) build a kernel that includes this;
 * AMD's matrix cores have no WMMA of this shape here, so HIP gets an error, not a fallback.
 */
#ifndef RFC_GPU_MMA_H
#define RFC_GPU_MMA_H

#if defined(RFC_CUDA)
#include <mma.h>
namespace rfc_wmma = nvcuda::wmma;
typedef __half rfc_mma_half;
#define RFC_MMA_HALF(f) __float2half_rn(f)
#elif defined(RFC_GPU_EMULATED)
/* gpu_emu.h defines rfc_wmma, rfc_mma_half and RFC_MMA_HALF */
#else
#error "rfc_gpu_mma.h: tensor-core kernels are built for sm_70 and newer only"
#endif

/* Multiplies row r of accumulator tile `f` by alpha[r] (the online softmax's rescale). The
 * fragment's lane layout is opaque, so the tile goes through the wave's 16 x 16 float `stage`
 * in shared memory: stored, each lane scaling its share of the elements, loaded back. Every
 * lane of the wave calls it (and, for the emulator's barrier, every lane of the block). */
template <typename Frag>
RFC_DEVICE_FN void rfc_wmma_scale_rows(Frag &f, const float *alpha, float *stage, int lane) {
    rfc_wmma::store_matrix_sync(stage, f, 16, rfc_wmma::mem_row_major);
    rfc_sync_wave();
    for (int e = lane; e < 256; e += RFC_WAVE) stage[e] *= alpha[e / 16];
    rfc_sync_wave();
    rfc_wmma::load_matrix_sync(f, stage, 16, rfc_wmma::mem_row_major);
    rfc_sync_wave();  // every lane has read the stage before it is used again
}

#endif /* RFC_GPU_MMA_H */
