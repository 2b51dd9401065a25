/*
 * The state word's final transitions.
 *
 * cancel__mark is the only way REQUESTED or DEAD gets set: one CAS loop on
 * the state word, lock-free and AS-safe, so that exactly one request wins
 * and fixes the cause, and a source is never both cancelled and dead. The
 * CAS that wins reads, in the same step, whether a waiter sleeps on the word
 * (WAITERS) or a descriptor exists (HAS_FD), and wakes them: waiters and
 * descriptor creators set their bit by RMW on the same word, so whichever
 * comes second in the word's modification order sees the other.
 */
#include "state.h"

#include <limits.h>
#include <stdlib.h>

void cancel__link_fire(void *child)
{
    /* Never called: its address tags link registrations. A body of its own
     * keeps the compiler from folding it with another function. */
    (void)child;
    abort();
}

bool cancel__mark(struct cancel_source *s, uint32_t bits)
{
    _Atomic uint32_t *w = cancel__word(s);
    uint32_t st = atomic_load_explicit(w, memory_order_relaxed);
    do {
        if (st & (ST_REQUESTED | ST_DEAD))
            return false;
        /* seq_cst (at least acq_rel): release publishes the cause data and
         * everything the caller did before; acquire makes extra->fd visible
         * when ST_HAS_FD is set (pairs with the fetch_or in cancel_token_fd);
         * seq_cst orders it before the worker-wanted load in cancel_async
         * (the Dekker pair described in request.c). */
    } while (!atomic_compare_exchange_weak_explicit(w, &st, st | bits, memory_order_seq_cst,
                                                    memory_order_relaxed));
    if (st & ST_WAITERS)
        cancel__futex_wake(w, INT_MAX);
    if (st & ST_HAS_FD) {
        struct cancel__extra *ex = atomic_load_explicit(&s->extra, memory_order_acquire);
        cancel__eventfd_signal(atomic_load_explicit(&ex->fd, memory_order_relaxed));
    }
    return true;
}
