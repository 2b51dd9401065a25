/*
 * A small lock for the library's short critical sections (linking and
 * unlinking a registration, popping one callback, filing a deadline).
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
 *
 * A source's lock has one more mode, for the thread that dispatches its
 * callbacks: it pops one callback per critical section, and a CAS per
 * callback would cost more than the callback. While it dispatches, the lock
 * word is LOCK_BIASED, with LOCK_IN_CS while the dispatcher is inside a
 * critical section; it enters and leaves with plain stores. Any other thread
 * that needs the lock meanwhile (rare: an unregister, a reset, a child
 * unhooking) is an *intruder*: it sets ST_INTRUDER in the state word (one
 * intruder at a time), issues the heavy fence, and waits for LOCK_IN_CS to
 * clear; the dispatcher, after setting LOCK_IN_CS, issues the light fence and
 * looks at ST_INTRUDER, and backs off if it is set. The same asymmetric
 * Dekker handshake as above: one of the two always sees the other.
 */
#ifndef CANCEL_LOCK_H
#define CANCEL_LOCK_H

#include "source.h"

enum { LOCK_HELD = 1, LOCK_BIASED = 2, LOCK_IN_CS = 1 /* with LOCK_BIASED */ };

/* Returns true once acquired; false (without acquiring) if it finds the lock
 * biased, which only a source's lock can be. */
CANCEL_HIDDEN bool cancel__lock_slow(_Atomic uint32_t *lock);
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
    bool acquired = cancel__lock_slow(lock); /* never biased: not a source's lock */
    (void)acquired;
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

/* ---- a source's lock ---- */

/* How a source's lock is held: normally, or as an intruder into a dispatch. */
typedef bool cancel__held;
CANCEL_HIDDEN cancel__held cancel__source_lock_slow(struct cancel_source *s);
CANCEL_HIDDEN void cancel__intruder_leave(struct cancel_source *s);

static inline cancel__held cancel__source_lock(struct cancel_source *s)
{
    uint32_t unlocked = 0;
    /* acquire: pairs with the release store of every way of unlocking. */
    if (cancel__likely(atomic_compare_exchange_weak_explicit(&s->lock, &unlocked, LOCK_HELD,
                                                             memory_order_acquire, memory_order_relaxed)))
        return false;
    return cancel__source_lock_slow(s);
}

static inline void cancel__source_unlock(struct cancel_source *s, cancel__held as_intruder)
{
    if (cancel__likely(!as_intruder))
        cancel__unlock(&s->lock);
    else
        cancel__intruder_leave(s);
}

/* The dispatcher's side (dispatch.c). Biasing needs the expedited barrier;
 * without it the dispatcher uses the lock normally. */
static inline bool cancel__bias_available(void)
{
    return atomic_load_explicit(&cancel__membarrier_ready, memory_order_relaxed);
}
/* Holding the lock normally: become the biased owner, inside a critical section. */
CANCEL_HIDDEN void cancel__bias_begin(struct cancel_source *s);
/* Inside a critical section: leave biased mode and release the lock. */
CANCEL_HIDDEN void cancel__bias_end(struct cancel_source *s);
/* Leave / enter the critical section: plain stores, unless an intruder is there. */
CANCEL_HIDDEN void cancel__bias_wake_intruders(struct cancel_source *s);
CANCEL_HIDDEN void cancel__bias_wait_intruder(struct cancel_source *s);

static inline void cancel__bias_leave_cs(struct cancel_source *s)
{
    /* release: pairs with the intruder's acquire load of the lock word. */
    atomic_store_explicit(&s->lock, LOCK_BIASED, memory_order_release);
    cancel__fence_light(); /* pairs with the intruder's heavy fence */
    if (cancel__unlikely(atomic_load_explicit(cancel__word(s), memory_order_relaxed) & ST_INTRUDER))
        cancel__bias_wake_intruders(s);
}

static inline void cancel__bias_enter_cs(struct cancel_source *s)
{
    atomic_store_explicit(&s->lock, LOCK_BIASED | LOCK_IN_CS, memory_order_relaxed);
    cancel__fence_light(); /* pairs with the intruder's heavy fence */
    /* acquire: pairs with the intruder's release when it left. */
    if (cancel__unlikely(atomic_load_explicit(cancel__word(s), memory_order_acquire) & ST_INTRUDER))
        cancel__bias_wait_intruder(s);
}

#endif /* CANCEL_LOCK_H */
