/* The contended half of lock.h. */
#include "lock.h"

struct cancel__sleepers cancel__sleepers[CANCEL__SLEEPER_BUCKETS];

/* Spin rounds before sleeping, with pauses doubling up to 32 per round: at
 * most 671 pauses (about 15 us where a pause is 23 ns), long enough to
 * cover many critical sections of a few dozen instructions, short enough
 * not to burn a time slice when the holder was preempted. */
#define SPIN_LIMIT 24

void cancel__lock_slow(_Atomic uint32_t *lock)
{
    /* Exponential backoff: a spinner that keeps reading the line slows the
     * holder, whose writes must take it back each time. */
    for (int i = 0, pause = 1; i < SPIN_LIMIT; i++) {
        uint32_t unlocked = 0;
        if (atomic_load_explicit(lock, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(lock, &unlocked, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
        for (int k = 0; k < pause; k++)
            cancel__cpu_relax();
        if (pause < 32)
            pause *= 2;
    }
    _Atomic uint32_t *sleepers = cancel__sleepers_of(lock);
    atomic_fetch_add_explicit(sleepers, 1, memory_order_relaxed);
    /* Pairs with cancel__fence_light in cancel__unlock: from here on, every
     * release either lets our futex_wait see 0 or sees our count. One heavy
     * fence covers all the rounds below, since the count stays raised. */
    bool fenced = cancel__fence_heavy();
    for (;;) {
        uint32_t unlocked = 0;
        if (atomic_compare_exchange_strong_explicit(lock, &unlocked, 1, memory_order_acquire,
                                                    memory_order_relaxed))
            break;
        /* EAGAIN, EINTR, spurious: retry. Without the barrier, a release may
         * have missed our count: look again every millisecond. */
        cancel__futex_wait(lock, 1, fenced ? -1 : cancel__add_sat(cancel__clock_ns(), 1000000));
    }
    atomic_fetch_sub_explicit(sleepers, 1, memory_order_relaxed);
}

void cancel__lock_atfork_child(void)
{
    /* Only the forking thread exists: nobody sleeps on any lock. */
    for (size_t i = 0; i < CANCEL__SLEEPER_BUCKETS; i++)
        atomic_store_explicit(&cancel__sleepers[i].n, 0, memory_order_relaxed);
}

void cancel__unlock_wake(_Atomic uint32_t *lock)
{
    cancel__futex_wake(lock, 1);
}
