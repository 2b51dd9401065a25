/*
 * cancel_sem: a counting semaphore on a futex.
 *
 * Locking and lifetime. No lock. One 64-bit word, `state`, holds the count
 * (low 32 bits), the number of sleepers (bits 32-62) and SIGNALED (bit 63),
 * so that taking a unit, becoming a sleeper and answering a wake-up are one
 * compare-and-swap that sees every post, and a post learns from its own
 * compare-and-swap whether it must wake anyone. Sleepers sleep on a separate
 * 32-bit futex word, `seq`, bumped by every wake-up (a post's, a
 * cancellation callback's). The caller owns the semaphore and frees it when
 * no thread uses it; a waiter's cancellation hook (hook.h) is through with it
 * before the wait returns.
 *
 * Wake-ups. A post that finds sleepers and SIGNALED clear sets SIGNALED in
 * its CAS, then bumps seq and wakes one sleeper. While SIGNALED is set, posts
 * wake nobody: a wake-up is on its way, so a burst of posts makes one system
 * call, not one each. Every CAS of a sleeper clears SIGNALED; a sleeper
 * reads seq before its CAS, so a post whose CAS comes after it bumps seq
 * after that read (the futex then does not sleep), and a post whose CAS came
 * before it is seen by it (its unit is in the count it reads). A sleeper
 * that takes a unit and leaves, or leaves without one (cancelled, timed out),
 * wakes the next sleeper if units remain: posts may have skipped their
 * wake-up because of the SIGNALED it cleared. A cancellation callback cannot
 * name its own waiter on a shared futex, so it wakes them all; the others
 * find nothing and sleep again (cancellations are rare; timeouts on the real
 * clock are the kernel's and wake only their own thread).
 */
#include "block/block.h"
#include "platform/platform.h"
#include "sync/hook.h"

#include <cancel/sync.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#define SLEEPER ((uint64_t)1 << 32)
#define SIGNALED ((uint64_t)1 << 63)
#define COUNT(s) ((uint32_t)(s))
#define SLEEPERS(s) ((uint32_t)(((s) & ~SIGNALED) >> 32))

struct cancel_sem {
    _Atomic uint64_t state; /* count | sleepers << 32 | SIGNALED */
    _Atomic uint32_t seq;   /* futex word of the sleepers; bumped by each wake-up */
};

cancel_sem *cancel_sem_new(unsigned initial)
{
    if (initial > (unsigned)CANCEL_SEM_MAX) {
        errno = EINVAL;
        return NULL;
    }
    cancel_sem *sem = malloc(sizeof *sem);
    if (!sem) {
        errno = ENOMEM;
        return NULL;
    }
    atomic_init(&sem->state, initial);
    atomic_init(&sem->seq, 0);
    return sem;
}

void cancel_sem_free(cancel_sem *sem)
{
    free(sem);
}

unsigned cancel_sem_value(const cancel_sem *sem)
{
    if (!sem)
        return 0;
    /* relaxed: a snapshot. */
    return COUNT(atomic_load_explicit(&((cancel_sem *)sem)->state, memory_order_relaxed));
}

/* Sets SIGNALED if sleepers wait for the units left and no wake-up is on its
 * way, then wakes one of them. */
static void signal_one(cancel_sem *sem)
{
    uint64_t s = atomic_load_explicit(&sem->state, memory_order_relaxed);
    do {
        if (COUNT(s) == 0 || SLEEPERS(s) == 0 || (s & SIGNALED))
            return;
        /* acq_rel: as the post's CAS. */
    } while (!atomic_compare_exchange_weak_explicit(&sem->state, &s, s | SIGNALED, memory_order_acq_rel,
                                                    memory_order_relaxed));
    cancel__hook_bump_wake(&sem->seq, 1);
}

int cancel_sem_post(cancel_sem *sem)
{
    if (!sem)
        return EINVAL;
    uint64_t s = atomic_load_explicit(&sem->state, memory_order_relaxed), n;
    do {
        if (COUNT(s) >= (uint32_t)CANCEL_SEM_MAX)
            return EOVERFLOW;
        n = s + 1;
        if (SLEEPERS(s) > 0)
            n |= SIGNALED;
        /* acq_rel: release publishes the poster's writes to the taker's
         * acquire; acquire orders this after the CAS of a sleeper that we
         * read, and so our bump of seq after that sleeper's read of seq. */
    } while (!atomic_compare_exchange_weak_explicit(&sem->state, &s, n, memory_order_acq_rel,
                                                    memory_order_relaxed));
    if (SLEEPERS(s) > 0 && !(s & SIGNALED))
        cancel__hook_bump_wake(&sem->seq, 1); /* release bump: a sleeper reading it sees the unit */
    return 0;
}

/* One unit, or false. */
static inline bool try_take(cancel_sem *sem)
{
    uint64_t s = atomic_load_explicit(&sem->state, memory_order_relaxed);
    while (COUNT(s) > 0) {
        /* acquire: pairs with the post's release. */
        if (atomic_compare_exchange_weak_explicit(&sem->state, &s, s - 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return true;
    }
    return false;
}

static int wait_slow(cancel_token tok, cancel_sem *sem, int64_t timeout_ns)
{
    struct cancel__until u;
    int err = cancel__until_begin(&u, tok, timeout_ns);
    if (err)
        return err;
    struct cancel__hook hook;
    cancel_token wt = cancel__until_token(&u);
    bool registered = false, sleeping = false, took = false;
    for (;;) {
        /* acquire: pairs with the release bump of a waker. Read before the
         * CAS below: see the top of the file. */
        uint32_t seq = atomic_load_explicit(&sem->seq, memory_order_acquire);
        err = cancel__until_check(&u);
        if (err == ECANCELED)
            break; /* cancellation wins over a unit */
        /* Take a unit (and stop sleeping), or count ourselves a sleeper
         * unless the time is up; either way clear SIGNALED. */
        uint64_t s = atomic_load_explicit(&sem->state, memory_order_relaxed), n;
        do {
            if (COUNT(s) > 0)
                n = (s - 1 - (sleeping ? SLEEPER : 0)) & ~SIGNALED;
            else if (!sleeping && !err)
                n = (s + SLEEPER) & ~SIGNALED;
            else if (sleeping && (s & SIGNALED))
                n = s & ~SIGNALED;
            else
                break;
            /* acq_rel: acquire pairs with the post's release (the unit);
             * release orders our read of seq before a post that reads this
             * value and then bumps seq. */
        } while (!atomic_compare_exchange_weak_explicit(&sem->state, &s, n, memory_order_acq_rel,
                                                        memory_order_relaxed));
        if (COUNT(s) > 0) {
            took = true;
            break;
        }
        if (err) /* ETIMEDOUT */
            break;
        sleeping = true;
        if (!registered) {
            cancel__hook_arm(&hook, wt, &sem->seq, NULL, NULL, false);
            registered = true;
            continue; /* an inline callback only bumped seq: look again */
        }
        cancel__blocked_enter("cancel_sem_wait", -1);
        cancel__futex_wait(&sem->seq, seq, cancel__until_kernel_deadline(&u));
        cancel__blocked_leave();
    }
    if (took) {
        err = 0;
        if (sleeping)
            signal_one(sem); /* posts may have skipped their wake-up for the SIGNALED we cleared */
    } else if (sleeping) {
        uint64_t s = atomic_load_explicit(&sem->state, memory_order_relaxed);
        /* acq_rel: the count we read must be current to decide the hand-on. */
        while (!atomic_compare_exchange_weak_explicit(&sem->state, &s, (s - SLEEPER) & ~SIGNALED,
                                                      memory_order_acq_rel, memory_order_relaxed)) {
        }
        signal_one(sem); /* a wake-up may have been meant for us */
    }
    if (registered)
        cancel__hook_disarm(&hook, wt);
    cancel__until_end(&u);
    return err;
}

int cancel_sem_wait(cancel_token tok, cancel_sem *sem, int64_t timeout_ns)
{
    if (cancel_token_is_requested(tok))
        return ECANCELED;
    if (!sem || (timeout_ns < 0 && timeout_ns != CANCEL_INFINITE))
        return EINVAL;
    if (try_take(sem))
        return 0;
    return wait_slow(tok, sem, timeout_ns);
}
