/*
 * A small lock for the library's short critical sections (linking and
 * unlinking a registration, popping one callback, a deadline heap update).
 *
 * Uncontended, acquire is one CAS and release one plain store: a
 * registration costs one atomic read-modify-write, not two. A contended
 * acquirer spins a bounded number of times, then sleeps on a futex. Release
 * learns whether anyone sleeps through a Dekker handshake with asymmetric
 * fences (platform.h): the releaser stores 0, issues the light fence and
 * reads a sleeper count; a sleeper increments the count, issues the heavy
 * fence and only then sleeps, and the futex re-checks the word in the kernel.
 * Either the releaser sees the count, or the sleeper's futex sees the word
 * at 0: no wake-up is lost.
 *
 * Sleeper counts live in a small global table hashed by the lock's address,
 * so that a lock costs 4 bytes. A collision costs only a spurious futex wake.
 */
#ifndef CANCEL_LOCK_H
#define CANCEL_LOCK_H

#include "platform.h"

CANCEL_HIDDEN void cancel__lock_slow(_Atomic uint32_t *lock);
CANCEL_HIDDEN void cancel__unlock_wake(_Atomic uint32_t *lock);
CANCEL_HIDDEN void cancel__lock_atfork_child(void);

struct cancel__sleepers {
    _Atomic uint32_t n;
    char pad[64 - sizeof(uint32_t)];
};
#define CANCEL__SLEEPER_BUCKETS 64
extern CANCEL_HIDDEN struct cancel__sleepers cancel__sleepers[CANCEL__SLEEPER_BUCKETS];

static inline _Atomic uint32_t *cancel__sleepers_of(_Atomic uint32_t *lock)
{
    uintptr_t h = (uintptr_t)lock;
    h ^= h >> 17;
    h *= 0x9E3779B97F4A7C15u;
    return &cancel__sleepers[(h >> 58) & (CANCEL__SLEEPER_BUCKETS - 1)].n;
}

static inline void cancel__lock(_Atomic uint32_t *lock)
{
    uint32_t unlocked = 0;
    /* acquire: pairs with the release store in cancel__unlock. */
    if (cancel__likely(atomic_compare_exchange_weak_explicit(lock, &unlocked, 1, memory_order_acquire,
                                                             memory_order_relaxed)))
        return;
    cancel__lock_slow(lock);
}

static inline void cancel__unlock(_Atomic uint32_t *lock)
{
    /* release: pairs with the acquire CAS in cancel__lock(_slow). */
    atomic_store_explicit(lock, 0, memory_order_release);
    /* Orders the store above before the load below; pairs with
     * cancel__fence_heavy in cancel__lock_slow. */
    cancel__fence_light();
    if (cancel__unlikely(atomic_load_explicit(cancel__sleepers_of(lock), memory_order_relaxed) != 0))
        cancel__unlock_wake(lock);
}

#endif /* CANCEL_LOCK_H */
