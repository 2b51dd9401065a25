/* The contended half of lock.h. */
#include "lock.h"

#include <limits.h>

struct cancel__sleepers cancel__sleepers[CANCEL__SLEEPER_BUCKETS];

/* Spin rounds before sleeping, with pauses doubling up to 32 per round: at
 * most 671 pauses (about 15 us where a pause is 23 ns), long enough to
 * cover many critical sections of a few dozen instructions, short enough
 * not to burn a time slice when the holder was preempted. */
#define SPIN_LIMIT 24

bool cancel__lock_slow(_Atomic uint32_t *lock)
{
    /* Exponential backoff: a spinner that keeps reading the line slows the
     * holder, whose writes must take it back each time. */
    for (int i = 0, pause = 1; i < SPIN_LIMIT; i++) {
        uint32_t w = atomic_load_explicit(lock, memory_order_relaxed);
        if (w & LOCK_BIASED)
            return false;
        if (w == 0 && atomic_compare_exchange_weak_explicit(lock, &w, LOCK_HELD, memory_order_acquire,
                                                            memory_order_relaxed))
            return true;
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
    bool acquired;
    for (;;) {
        uint32_t w = 0;
        if (atomic_compare_exchange_strong_explicit(lock, &w, LOCK_HELD, memory_order_acquire,
                                                    memory_order_relaxed)) {
            acquired = true;
            break;
        }
        if (w & LOCK_BIASED) { /* a dispatch began: intrude instead */
            acquired = false;
            break;
        }
        /* EAGAIN, EINTR, spurious: retry. Without the barrier, a release may
         * have missed our count: look again every millisecond. */
        cancel__futex_wait(lock, LOCK_HELD, fenced ? -1 : cancel__add_sat(cancel__clock_ns(), 1000000));
    }
    atomic_fetch_sub_explicit(sleepers, 1, memory_order_relaxed);
    return acquired;
}

/* ---- a source's lock in biased mode ---- */

/* Waits (spin, then futex) while *word == value. */
static void wait_while(_Atomic uint32_t *word, uint32_t value)
{
    for (int i = 0; i < 64; i++) {
        if (atomic_load_explicit(word, memory_order_relaxed) != value)
            return;
        cancel__cpu_relax();
    }
    cancel__futex_wait(word, value, -1);
}

void cancel__intruder_leave(struct cancel_source *s)
{
    /* release: pairs with the dispatcher's acquire load in
     * cancel__bias_enter_cs (and with the next intruder's RMW). */
    atomic_fetch_and_explicit(cancel__word(s), ~(uint32_t)ST_INTRUDER, memory_order_release);
    /* The dispatcher or another intruder may sleep on the state word. */
    cancel__futex_wake(cancel__word(s), INT_MAX);
}

/* Takes the lock as an intruder into a dispatch; false if the dispatch ended
 * meanwhile (then the lock is to be taken normally). */
static bool intrude(struct cancel_source *s)
{
    _Atomic uint32_t *st = cancel__word(s);
    for (;;) { /* one intruder at a time */
        uint32_t old = atomic_fetch_or_explicit(st, ST_INTRUDER, memory_order_acq_rel);
        if (!(old & ST_INTRUDER))
            break;
        wait_while(st, old);
    }
    /* Pairs with the dispatcher's light fence in cancel__bias_enter_cs: it
     * either sees ST_INTRUDER and stays out, or we see LOCK_IN_CS below.
     * Here the barrier is what excludes the dispatcher, not a wake-up
     * optimisation, so its failure cannot be papered over. The kernel fails
     * it only for a process that never registered, and the registration
     * (made before any source was biased) is kept for the life of the
     * process and inherited by fork children. */
    if (!cancel__fence_heavy())
        cancel__fatal("the process-wide memory barrier failed after registration");
    for (;;) {
        /* acquire: pairs with the dispatcher's release when it left its
         * critical section. */
        uint32_t w = atomic_load_explicit(&s->lock, memory_order_acquire);
        if (!(w & LOCK_BIASED)) {
            cancel__intruder_leave(s);
            return false;
        }
        if (!(w & LOCK_IN_CS))
            return true;
        wait_while(&s->lock, w);
    }
}

cancel__held cancel__source_lock_slow(struct cancel_source *s)
{
    for (;;) {
        uint32_t w = 0;
        if (atomic_compare_exchange_strong_explicit(&s->lock, &w, LOCK_HELD, memory_order_acquire,
                                                    memory_order_relaxed))
            return false;
        if (!(w & LOCK_BIASED)) {
            if (cancel__lock_slow(&s->lock))
                return false;
        } else if (intrude(s)) {
            return true;
        }
    }
}

void cancel__bias_begin(struct cancel_source *s)
{
    atomic_store_explicit(&s->lock, LOCK_BIASED | LOCK_IN_CS, memory_order_relaxed);
    /* Threads asleep on the normal lock would sleep through the dispatch:
     * wake them so they come back as intruders. Pairs with their heavy fence. */
    cancel__fence_light();
    if (atomic_load_explicit(cancel__sleepers_of(&s->lock), memory_order_relaxed))
        cancel__futex_wake(&s->lock, INT_MAX);
}

void cancel__bias_end(struct cancel_source *s)
{
    /* Inside the critical section, so no intruder holds it. */
    atomic_store_explicit(&s->lock, 0, memory_order_release);
    cancel__fence_light();
    if (atomic_load_explicit(cancel__sleepers_of(&s->lock), memory_order_relaxed))
        cancel__futex_wake(&s->lock, 1);
    if (atomic_load_explicit(cancel__word(s), memory_order_relaxed) & ST_INTRUDER)
        cancel__futex_wake(&s->lock, INT_MAX); /* they will find the lock normal */
}

void cancel__bias_wake_intruders(struct cancel_source *s)
{
    cancel__futex_wake(&s->lock, INT_MAX);
}

void cancel__bias_wait_intruder(struct cancel_source *s)
{
    _Atomic uint32_t *st = cancel__word(s);
    uint32_t v;
    /* acquire: pairs with the release in cancel__intruder_leave. */
    while ((v = atomic_load_explicit(st, memory_order_acquire)) & ST_INTRUDER) {
        atomic_store_explicit(&s->lock, LOCK_BIASED, memory_order_release);
        cancel__fence_light();
        cancel__futex_wake(&s->lock, INT_MAX); /* it may sleep waiting for us to leave */
        wait_while(st, v);
        atomic_store_explicit(&s->lock, LOCK_BIASED | LOCK_IN_CS, memory_order_relaxed);
        cancel__fence_light();
    }
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
