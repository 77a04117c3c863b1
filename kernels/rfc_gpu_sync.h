/* Device-wide ordering for blocks that count their arrival in global memory (split attention's
 * last-block merge, ATTENTION_LAST_BLOCK_MERGE): a release fence before the count, the count
 * itself (an atomic add on an int in global memory, returning the old value), and an acquire
 * fence by the block that read the last count before it reads what the others wrote. Included
 * after rfc_gpu.h, only by the kernels that count (the others' sources stay as they were). */
#ifndef RFC_GPU_SYNC_H
#define RFC_GPU_SYNC_H

#if defined(RFC_HIP)
/* agent scope: every CU of the card; __atomic builtins on amdgcn default to system scope */
#define RFC_DEVICE_FENCE_RELEASE() __builtin_amdgcn_fence(__ATOMIC_RELEASE, "agent")
#define RFC_DEVICE_FENCE_ACQUIRE() __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "agent")
#define RFC_DEVICE_ATOMIC_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)
#elif defined(RFC_CUDA)
/* __threadfence orders both ways at device scope; atomicAdd is device-scoped */
#define RFC_DEVICE_FENCE_RELEASE() __threadfence()
#define RFC_DEVICE_FENCE_ACQUIRE() __threadfence()
#define RFC_DEVICE_ATOMIC_ADD(p, v) atomicAdd((p), (v))
#elif defined(RFC_GPU_EMULATED)
/* the emulator runs blocks one after another: a plain add, no fence */
#define RFC_DEVICE_FENCE_RELEASE() ((void)0)
#define RFC_DEVICE_FENCE_ACQUIRE() ((void)0)
RFC_DEVICE_FN int rfc_emu_fetch_add(int *p, int v) {
    const int old = *p;
    *p = old + v;
    return old;
}
#define RFC_DEVICE_ATOMIC_ADD(p, v) rfc_emu_fetch_add((p), (v))
#else
#error "rfc_gpu_sync.h: include rfc_gpu.h first"
#endif

#endif /* RFC_GPU_SYNC_H */
