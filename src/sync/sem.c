/*
 * cancel_sem: a counting semaphore on a futex.
 *
 * Locking and lifetime. No lock. One 64-bit word, `state`, holds the count
 * (low 32 bits), and in its upper half a counter of cancellation kicks
 * (bits 32-40), the number of sleepers (bits 41-62) and SIGNALED (bit 63),
 * so that taking a unit, becoming a sleeper and answering a wake-up are one
 * compare-and-swap that sees every post, and a post learns from its own
 * compare-and-swap whether it must wake anyone. Sleepers sleep on the upper
 * half itself, as a futex word. The caller owns the semaphore and frees it
 * when no thread waits on it; a waiter's cancellation hook (hook.h) is
 * through with it before the wait returns.
 *
 * A post touches the semaphore once: its compare-and-swap, which hands its
 * unit over. If it must wake someone, it then passes the futex word's
 * address to the kernel, which reads no memory. So a thread that takes the
 * unit may free the semaphore at once, while the poster is still inside
 * cancel_sem_post (POSIX allows sem_destroy once no thread is blocked on
 * it): a waiter that took the unit without the wake-up (its timeout woke
 * it, or it had not slept yet) may do so. The futex word is therefore a
 * part of `state`: a separate word that the post bumped after its
 * compare-and-swap would be written after the hand-over.
 *
 * Wake-ups. A post that finds sleepers and SIGNALED clear sets SIGNALED in
 * its CAS, then wakes one sleeper. While SIGNALED is set, posts wake nobody:
 * a wake-up is on its way, so a burst of posts makes one system call, not
 * one each. Every CAS of a sleeper clears SIGNALED, and a sleeper sleeps on
 * the upper half it last read or wrote, in which SIGNALED is clear: a post
 * whose CAS comes after it sets the bit, so the futex does not sleep (or
 * the wake-up finds the sleeper queued). The bit is cleared again only by a
 * sleeper's CAS, that is by a sleeper that looks at the count in that very
 * CAS: it takes the unit, or finds it taken already. A sleeper that takes a
 * unit and leaves, or leaves without one (cancelled, timed out), wakes the
 * next sleeper if units remain: posts may have skipped their wake-up
 * because of the SIGNALED it cleared.
 *
 * Cancellation. A cancellation callback cannot name its own waiter on a
 * shared futex, so it bumps the kick counter (which changes the futex word:
 * a sleeper that has not entered the kernel yet does not sleep) and wakes
 * them all; the others find nothing and sleep again (cancellations are
 * rare; timeouts on the real clock are the kernel's and wake only their own
 * thread). A sleeper reads the kick counter before it checks its token and
 * compares it after its CAS: a kick in between (which a sleeper's CAS would
 * otherwise carry into the value it sleeps on) sends it back to look. The
 * counter has 9 bits: a sleeper could miss its kick only if exactly 512 (or
 * a multiple) came, and the sleepers' count returned to the same value,
 * between its last look and its entry into the kernel.
 */
#include "block/block.h"
#include "platform/platform.h"
#include "sync/hook.h"

#include <cancel/sync.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#define COUNT(s) ((uint32_t)(s))
#define KICK_ONE ((uint64_t)1 << 32)
#define KICKS ((uint64_t)511 << 32)
#define KICK(s) ((uint32_t)(((s) & KICKS) >> 32))
#define SLEEPER ((uint64_t)1 << 41) /* 22 bits: more than the threads Linux can run (2^22 ids) */
#define SLEEPERS(s) ((uint32_t)(((s) >> 41) & ((1u << 22) - 1)))
#define SIGNALED ((uint64_t)1 << 63)
#define UPPER(s) ((uint32_t)((s) >> 32))

struct cancel_sem {
    _Atomic uint64_t state; /* count | kicks << 32 | sleepers << 41 | SIGNALED */
};

/* The futex word of the sleepers: the upper half of `state`. */
static _Atomic uint32_t *sleep_word(cancel_sem *sem)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (_Atomic uint32_t *)(void *)((char *)&sem->state + 4);
#else
    return (_Atomic uint32_t *)(void *)&sem->state;
#endif
}

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
 * way, then wakes one of them. Called by a sleeper that leaves, which still
 * holds the semaphore. */
static void signal_one(cancel_sem *sem)
{
    uint64_t s = atomic_load_explicit(&sem->state, memory_order_relaxed);
    do {
        if (COUNT(s) == 0 || SLEEPERS(s) == 0 || (s & SIGNALED))
            return;
        /* relaxed: the bit publishes nothing; the word's order alone decides
         * which sleeper's CAS or futex compare sees it. */
    } while (!atomic_compare_exchange_weak_explicit(&sem->state, &s, s | SIGNALED, memory_order_relaxed,
                                                    memory_order_relaxed));
    cancel__futex_wake(sleep_word(sem), 1);
}

int cancel_sem_post(cancel_sem *sem)
{
    if (!sem)
        return EINVAL;
    _Atomic uint32_t *word = sleep_word(sem); /* an address: nothing to read after the hand-over */
    uint64_t s = atomic_load_explicit(&sem->state, memory_order_relaxed), n;
    do {
        if (COUNT(s) >= (uint32_t)CANCEL_SEM_MAX)
            return EOVERFLOW;
        n = s + 1;
        if (SLEEPERS(s) > 0)
            n |= SIGNALED;
        /* release: publishes the poster's writes to the taker's acquire. */
    } while (!atomic_compare_exchange_weak_explicit(&sem->state, &s, n, memory_order_release,
                                                    memory_order_relaxed));
    /* The unit is handed over: sem may be freed from here on. */
    if (SLEEPERS(s) > 0 && !(s & SIGNALED))
        cancel__futex_wake(word, 1);
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

/* A sleeper's cancellation hook and the semaphore its callback kicks. */
struct sleeper {
    struct cancel__hook hook;
    cancel_sem *sem; /* r/o */
};

/* The callback: a kick (see the top). The semaphore is alive: its waiter
 * does not return before `done`. */
static void kick(void *arg)
{
    struct sleeper *sl = arg;
    cancel_sem *sem = sl->sem;
    _Atomic uint32_t *word = sleep_word(sem);
    uint64_t s = atomic_load_explicit(&sem->state, memory_order_relaxed);
    /* release: pairs with the sleeper's acquire load of state, which then
     * sees the cancellation (made before this callback ran). */
    while (!atomic_compare_exchange_weak_explicit(&sem->state, &s, (s & ~KICKS) | ((s + KICK_ONE) & KICKS),
                                                  memory_order_release, memory_order_relaxed)) {
    }
    /* release: pairs with the waiter's acquire in cancel__hook_disarm. */
    atomic_store_explicit(&sl->hook.done, 1, memory_order_release);
    cancel__futex_wake(word, INT_MAX); /* the address only, see hook.h */
}

static int wait_slow(cancel_token tok, cancel_sem *sem, int64_t timeout_ns)
{
    struct cancel__until u;
    int err = cancel__until_begin(&u, tok, timeout_ns);
    if (err)
        return err;
    struct sleeper sl = {.sem = sem};
    cancel_token wt = cancel__until_token(&u);
    bool registered = false, sleeping = false, took = false;
    for (;;) {
        /* acquire: pairs with a kick's release: a cancellation that kicked
         * before this load is seen by the check below. */
        uint64_t s = atomic_load_explicit(&sem->state, memory_order_acquire), n;
        uint32_t kicks = KICK(s);
        err = cancel__until_check(&u);
        if (err == ECANCELED)
            break; /* cancellation wins over a unit */
        /* Take a unit (and stop sleeping), or count ourselves a sleeper
         * unless the time is up; either way clear SIGNALED. */
        for (;;) {
            if (COUNT(s) > 0)
                n = (s - 1 - (sleeping ? SLEEPER : 0)) & ~SIGNALED;
            else if (!sleeping && !err)
                n = (s + SLEEPER) & ~SIGNALED;
            else if (sleeping && (s & SIGNALED))
                n = s & ~SIGNALED;
            else {
                n = s; /* nothing to change: sleep on what we read */
                break;
            }
            /* acquire: pairs with the post's release (the unit). */
            if (atomic_compare_exchange_weak_explicit(&sem->state, &s, n, memory_order_acquire,
                                                      memory_order_relaxed))
                break;
        }
        if (COUNT(s) > 0) {
            took = true;
            break;
        }
        if (err) /* ETIMEDOUT */
            break;
        sleeping = true;
        if (!registered) {
            cancel__hook_arm(&sl.hook, wt, NULL, kick, &sl, false);
            registered = true;
            continue; /* an inline callback only kicked: look again */
        }
        if (KICK(n) != kicks)
            continue; /* kicked since our load: look again */
        cancel__blocked_enter("cancel_sem_wait", -1);
        cancel__futex_wait(sleep_word(sem), UPPER(n), cancel__until_kernel_deadline(&u));
        cancel__blocked_leave();
    }
    if (took) {
        err = 0;
        if (sleeping)
            signal_one(sem); /* posts may have skipped their wake-up for the SIGNALED we cleared */
    } else if (sleeping) {
        uint64_t s = atomic_load_explicit(&sem->state, memory_order_relaxed);
        /* relaxed: signal_one looks at the count again. */
        while (!atomic_compare_exchange_weak_explicit(&sem->state, &s, (s - SLEEPER) & ~SIGNALED,
                                                      memory_order_relaxed, memory_order_relaxed)) {
        }
        signal_one(sem); /* a wake-up may have been meant for us */
    }
    if (registered)
        cancel__hook_disarm(&sl.hook, wt);
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
