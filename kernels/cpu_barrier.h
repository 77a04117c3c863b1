/* The team's barrier between phases: spin while the others are about to arrive, sleep
 * (futex) when they are not. How long to spin adapts: a barrier met while spinning lets the
 * next ones spin longer (up to RFC_SPIN_MAX checks, ~0.3 ms), one that had to sleep halves
 * it (down to RFC_SPIN_MIN). On an idle machine phases end within microseconds of each other
 * and nobody sleeps (libgomp's passive barrier would pay a futex wake-up each time); on a
 * busy one a thread waiting for a preempted peer gives its core away at once instead of
 * spinning against it (libgomp's active barrier: decode collapsed to a few tok/s). The
 * generation word is the futex; `count` is reset before `gen` moves on; the waker reads
 * `sleepers` after publishing `gen` and a sleeper re-reads `gen` after counting itself
 * (both sequentially consistent), so no wake-up is lost. */
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define RFC_SPIN_MIN 64
#define RFC_SPIN_MAX 16384
static int rfc_spin = 1024; /* shared by every step of this library: a hint, raced on freely */

typedef struct {
    int count;
    int gen;
    int sleepers;
    int pad[13];
} rfc_barrier_t;

static inline void rfc_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void rfc_barrier(rfc_barrier_t *b, int nth) {
    if (nth == 1) return;
    const int gen = __atomic_load_n(&b->gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == nth) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->gen, gen + 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&b->sleepers, __ATOMIC_SEQ_CST))
            syscall(SYS_futex, &b->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        return;
    }
    const int spin = __atomic_load_n(&rfc_spin, __ATOMIC_RELAXED);
    for (int i = 0; i < spin; i++) {
        if (__atomic_load_n(&b->gen, __ATOMIC_ACQUIRE) != gen) {
            if (spin < RFC_SPIN_MAX) __atomic_store_n(&rfc_spin, spin * 2, __ATOMIC_RELAXED);
            return;
        }
        rfc_cpu_relax();
    }
    if (spin > RFC_SPIN_MIN) __atomic_store_n(&rfc_spin, spin / 2, __ATOMIC_RELAXED);
    __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&b->gen, __ATOMIC_SEQ_CST) == gen)
        syscall(SYS_futex, &b->gen, FUTEX_WAIT_PRIVATE, gen, NULL, NULL, 0);
    __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
}
