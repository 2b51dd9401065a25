/*
 * The library's clock. One atomic word: the manual clock's reading, or OFF
 * for CLOCK_MONOTONIC. The real path costs one load (seq_cst, a plain load
 * on x86) and a branch before the clock read.
 *
 * Timed waits on a token register here as sleepers (a list under a mutex,
 * touched once per timed wait that blocks), so that moving the manual clock,
 * or switching it on or off, wakes the ones whose timeout it decides. The
 * Dekker argument: the mover changes the time (seq_cst), then bumps the tick
 * count (ST_TICK, bits 24-31) of the sleeper's word (seq_cst) and wakes it;
 * the sleeper loads its word (seq_cst), then reads the time. If its load
 * missed the bump, the bump comes later and makes the kernel's comparison of
 * the word fail, or finds it asleep and wakes it. A count rather than a bit:
 * two sleepers on one word bumped twice must not find it back as it was
 * (256 bumps inside one such window would be needed for that).
 *
 * fork: sleepers_mu is held across fork by handlers of this file's own,
 * installed with the first sleeper, and the child starts with no sleeper.
 */
#include "clock.h"

#include <limits.h>
#include <pthread.h>

#define OFF CANCEL__CLOCK_OFF

/* seq_cst: the sleepers' Dekker argument above (a plain load on x86). No
 * other data hangs on it: fired deadlines are ordered by the timer lock. */
_Atomic int64_t cancel__manual_now = OFF;

static pthread_mutex_t sleepers_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cancel__sleeper *sleepers; /* under sleepers_mu */

int64_t cancel_now(void)
{
    return cancel__now();
}

bool cancel_clock_is_manual(void)
{
    return atomic_load_explicit(&cancel__manual_now, memory_order_relaxed) != OFF;
}

bool cancel__clock_set_manual(bool on)
{
    int64_t m = atomic_load_explicit(&cancel__manual_now, memory_order_relaxed);
    for (;;) {
        if ((m != OFF) == on)
            return false;
        int64_t next = on ? cancel__clock_ns() : OFF;
        if (atomic_compare_exchange_weak_explicit(&cancel__manual_now, &m, next, memory_order_seq_cst,
                                                  memory_order_relaxed))
            return true;
    }
}

bool cancel__clock_move(int64_t ns)
{
    int64_t m = atomic_load_explicit(&cancel__manual_now, memory_order_relaxed);
    for (;;) {
        if (m == OFF)
            return false;
        int64_t next = cancel__add_sat(m, ns);
        if (next == OFF)
            next = OFF + 1;
        if (atomic_compare_exchange_weak_explicit(&cancel__manual_now, &m, next, memory_order_seq_cst,
                                                  memory_order_relaxed))
            return true;
    }
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&sleepers_mu);
}
static void atfork_parent(void)
{
    pthread_mutex_unlock(&sleepers_mu);
}
static void atfork_child(void)
{
    sleepers = NULL; /* the sleeping threads are the parent's */
    pthread_mutex_unlock(&sleepers_mu);
}
static void install_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

void cancel__clock_sleeper_add(struct cancel__sleeper *z)
{
    pthread_once(&atfork_once, install_atfork);
    pthread_mutex_lock(&sleepers_mu);
    z->prev = NULL;
    z->next = sleepers;
    if (sleepers)
        sleepers->prev = z;
    sleepers = z;
    pthread_mutex_unlock(&sleepers_mu);
}

void cancel__clock_sleeper_remove(struct cancel__sleeper *z)
{
    pthread_mutex_lock(&sleepers_mu);
    if (z->prev)
        z->prev->next = z->next;
    else
        sleepers = z->next;
    if (z->next)
        z->next->prev = z->prev;
    pthread_mutex_unlock(&sleepers_mu);
}

void cancel__clock_wake_sleepers(int64_t now)
{
    pthread_mutex_lock(&sleepers_mu);
    for (struct cancel__sleeper *z = sleepers; z; z = z->next) {
        if (z->deadline > now)
            continue;
        /* The word's memory is safe: the sleeper holds a reference to its
         * source and leaves the list (under this mutex) before dropping it. */
        atomic_fetch_add(z->word, ST_TICK); /* wraps within bits 24-31 */
        cancel__futex_wake(z->word, INT_MAX);
    }
    pthread_mutex_unlock(&sleepers_mu);
}
