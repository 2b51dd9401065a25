/*
 * Blocking on a token: a futex on the state word (cancel_token_wait), or a
 * lazily created eventfd (cancel_token_fd).
 *
 * Both announce themselves by RMW on the state word (ST_WAITERS, ST_HAS_FD)
 * and the canceller learns of them from its own CAS on that word, so one of
 * the two always sees the other: a wait never misses the cancel, and a
 * descriptor made after the cancel is signalled by its creator.
 *
 * A wait with a timeout is a sleeper of the clock (clock.c): on the real
 * clock the kernel ends it at its absolute deadline; on the manual clock it
 * sleeps without one and the clock wakes it when moved past the deadline.
 */
#include "clock.h"
#include "ref.h"

bool cancel_token_wait(cancel_token tok, int64_t timeout_ns)
{
    struct cancel_source *s = cancel__source_of(tok);
    if (timeout_ns < 0 && timeout_ns != CANCEL_INFINITE) {
        errno = EINVAL;
        return false;
    }
    if (!s)
        return false;
    _Atomic uint32_t *w = cancel__word(s);
    /* acquire: on true, the canceller's writes are visible to the caller. */
    uint32_t st = atomic_load_explicit(w, memory_order_acquire);
    if (st & ST_REQUESTED)
        return true;
    if ((st & ST_DEAD) || timeout_ns == 0)
        return false;
    struct cancel__sleeper z = {w, CANCEL_INFINITE, NULL, NULL};
    if (timeout_ns != CANCEL_INFINITE) {
        z.deadline = cancel__add_sat(cancel__now(), timeout_ns);
        cancel__clock_sleeper_add(&z);
    }

    /* Our own reference: the owner may free the source while we sleep. */
    cancel__retain(s);
    bool result;
    for (;;) {
        /* seq_cst: the sleepers' handshake with the clock (clock.c); it is
         * also the acquire that makes the canceller's writes visible. */
        st = atomic_load(w);
        if (st & (ST_REQUESTED | ST_DEAD)) {
            result = st & ST_REQUESTED;
            break;
        }
        bool manual = cancel_clock_is_manual();
        if (z.deadline != CANCEL_INFINITE && cancel__now() >= z.deadline) {
            result = false;
            break;
        }
        if (!(st & ST_WAITERS)) {
            /* relaxed: the kernel compares the word; the cancel's CAS reads
             * this bit in the same modification order. */
            if (!atomic_compare_exchange_weak_explicit(w, &st, st | ST_WAITERS, memory_order_relaxed,
                                                       memory_order_relaxed))
                continue;
            st |= ST_WAITERS;
        }
        /* On the manual clock the deadline is not the kernel's to keep. */
        cancel__futex_wait(w, st, manual ? -1 : z.deadline);
    }
    if (z.deadline != CANCEL_INFINITE)
        cancel__clock_sleeper_remove(&z);
    cancel__release(s);
    return result;
}

int cancel_token_fd(cancel_token tok)
{
    struct cancel_source *s = cancel__source_of(tok);
    if (!s) {
        errno = EINVAL;
        return -1;
    }
    struct cancel__extra *ex = cancel__extra_get(s);
    if (!ex)
        return -1; /* errno ENOMEM */
    int fd = atomic_load_explicit(&ex->fd, memory_order_acquire);
    if (fd >= 0)
        return fd;
    int nfd = cancel__eventfd_open();
    if (nfd < 0) {
        errno = -nfd;
        return -1;
    }
    /* acq_rel: release publishes the descriptor; acquire reads a rival's. */
    if (!atomic_compare_exchange_strong_explicit(&ex->fd, &fd, nfd, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        cancel__fd_close(nfd);
        return fd;
    }
    /* acq_rel: pairs with the CAS in cancel__mark. Whichever comes second
     * sees the other's bit and signals the descriptor. */
    uint32_t st = atomic_fetch_or_explicit(cancel__word(s), ST_HAS_FD, memory_order_acq_rel);
    if (st & (ST_REQUESTED | ST_DEAD))
        cancel__eventfd_signal(nfd);
    return nfd;
}
