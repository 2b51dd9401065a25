/*
 * cancel_cond_wait: pthread_cond_wait that a cancellation also ends.
 *
 * Locking and lifetime. The caller's mutex is held on entry and on every
 * return; pthread_cond_clockwait releases and retakes it. The waiter
 * registers one callback on the until-token (block.h) just before it
 * sleeps, through a hook (hook.h); the callback's state (struct waiter)
 * lives on the waiter's stack. The callback sets hook.done once its
 * broadcast has returned, and the waiter does not return before that (the
 * caller may destroy the condvar as soon as it has), nor before the
 * callback is unregistered if it never ran. The callback takes no lock: the
 * canceller may hold the caller's mutex (a documented use), and the library
 * thread must never block on a user's lock.
 *
 * The lost wake-up. A cancellation may come while the waiter is between
 * its last check of the token and its entry into pthread_cond_wait. A
 * broadcast made then is lost: the waiter is not on the condvar yet. It
 * holds the mutex through that whole window (it registered with the mutex
 * held), and the condvar only promises to deliver broadcasts made after the
 * mutex was released. So the callback looks at who holds the mutex: while
 * it is the waiting thread itself, and the waiter has not returned, the
 * waiter is inside the window or just past its wake-up, and the callback
 * waits (a bounded spin, then sleeps of growing length) for that to end.
 * glibc registers a waiter in the condvar before it releases the mutex
 * inside pthread_cond_wait, and clears the owner field on release, so once
 * the owner is someone else the broadcast reaches the waiter. The waiter
 * sets `returned` as soon as pthread_cond_clockwait returns, so a callback
 * that finds the waiter owning the mutex again (woken by someone else) stops
 * waiting and broadcasts nothing. Nothing the callback waits for depends on
 * the canceller: the waiter crosses the window without blocking.
 *
 * Why seeing the owner change proves the waiter registered: glibc's
 * pthread_cond_wait registers the waiter with atomic read-modify-writes
 * (one relaxed, one acquire), then clears the owner with a plain store, then
 * releases the lock word. On x86 (CANCEL__STORES_IN_ORDER) stores become
 * visible in the order they were made and the read-modify-writes are full
 * barriers, so a callback that sees the owner cleared, or set by the next
 * holder (whose locking read the release), sees the registration too, and
 * its broadcast reaches the waiter. Elsewhere (aarch64, POWER) nothing
 * orders the registration before the owner's clearing: the callback may see
 * the owner cleared first and broadcast too early. There the callback still
 * waits for the owner to change (right nearly always, and free), and the
 * waiter also sleeps in slices of SLICE_NS, so that an early broadcast costs
 * at most a slice.
 *
 * The cost: the waiter, woken by the broadcast, waits for the broadcast to
 * return on the canceller's side (a system call that, on a virtual machine,
 * returns microseconds after the wake-up it made): the one place where the
 * cancel-to-return latency exceeds the raw condvar's (docs/sync.md).
 *
 * Where the owner cannot be read (a C library other than glibc, or glibc's
 * lock elision, which leaves the field empty: the waiter checks at entry that
 * the field names a holder), the callback broadcasts at once and the waiter
 * sleeps in slices of SLICE_NS, rechecking the token between them; so it
 * does where the owner can be read but proves nothing (above).
 *
 * Timeouts: pthread_cond_clockwait on CLOCK_MONOTONIC with the kernel
 * deadline (block.h), so the condvar's clock attribute does not matter; on
 * the manual clock the until-token carries the timeout and its callback is
 * the same broadcast.
 */
#include "block/block.h"
#include "platform/platform.h"
#include "sync/hook.h"

#include <cancel/sync.h>

#include <errno.h>
#include <time.h>

#define SLICE_NS 1000000 /* fallback: longest sleep before rechecking the token */
#define SPINS 64         /* callback: polls of the owner before it starts sleeping */

struct waiter {
    pthread_cond_t *cond;    /* r/o */
    pthread_mutex_t *mutex;  /* r/o */
    int tid;                 /* r/o: the waiting thread's id, as the mutex records it; 0: unknown */
    _Atomic int returned;    /* set by the waiter when pthread_cond_clockwait returned */
    struct cancel__hook hook; /* the registration; hook.done is set when the callback is through */
};

static void pause_round(unsigned round)
{
    if (round < SPINS) {
        cancel__cpu_relax();
        return;
    }
    /* The waiter is off its CPU (preempted inside the window): sleep, from
     * 1 us doubling to 1 ms, rather than spin against it. A futex wait on a
     * word nobody changes, with a deadline: unlike nanosleep, not a pthread
     * cancellation point, for this runs on whatever thread cancels the
     * token, inside the core's dispatch (a thread with a cancellation
     * pending would be unwound from there, and the broadcast lost). */
    unsigned shift = round - SPINS < 10 ? round - SPINS : 10;
    _Atomic uint32_t never = 0;
    (void)cancel__futex_wait(&never, 0, cancel__clock_ns() + (1000 << shift));
}

static void wake(void *arg)
{
    struct waiter *w = arg;
    if (w->tid > 0) {
        for (unsigned round = 0;; round++) {
            /* acquire: pairs with the waiter's release store: it is awake,
             * nothing to broadcast; w stays valid until we set done (the
             * waiter's disarm waits for it). */
            if (atomic_load_explicit(&w->returned, memory_order_acquire)) {
                atomic_store_explicit(&w->hook.done, 1, memory_order_release);
                return;
            }
            if (cancel__mutex_owner(w->mutex) != w->tid)
                break;
            pause_round(round);
        }
    }
    pthread_cond_broadcast(w->cond);
    /* release: pairs with the waiter's acquire in cancel__hook_disarm; the
     * broadcast is over, so the waiter may return and the caller destroy
     * the condvar. */
    atomic_store_explicit(&w->hook.done, 1, memory_order_release);
}

struct ending {
    struct waiter *w;
    struct cancel__until *u;
};

/* After pthread_cond_clockwait returned (or the thread was cancelled in
 * it): nothing of the wait is left behind. Returns why it should end. */
static int end_wait_check(struct ending *e)
{
    /* release: pairs with the callback's acquire load; from here the
     * callback need not wait for us. */
    atomic_store_explicit(&e->w->returned, 1, memory_order_release);
    cancel__blocked_leave();
    cancel__hook_disarm(&e->w->hook, cancel__until_token(e->u)); /* the callback is through with w */
    int why = cancel__until_check(e->u);
    cancel__until_end(e->u);
    return why;
}

static void end_wait(void *arg)
{
    end_wait_check(arg);
}

static struct timespec to_timespec(int64_t ns)
{
    return (struct timespec){(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
}

int cancel_cond_wait(cancel_token tok, pthread_cond_t *cond, pthread_mutex_t *mutex, int64_t timeout_ns)
{
    if (cancel_token_is_requested(tok))
        return ECANCELED;
    if (!cond || !mutex)
        return EINVAL;
    struct cancel__until u;
    int err = cancel__until_begin(&u, tok, timeout_ns);
    if (err)
        return err;
    err = cancel__until_check(&u);
    if (err) {
        cancel__until_end(&u);
        return err;
    }

    struct waiter w = {.cond = cond, .mutex = mutex, .tid = cancel__mutex_owner(mutex)};
    atomic_init(&w.returned, 0);
    if (w.tid <= 0)
        w.tid = 0; /* not recorded: sleep in slices */
    cancel_token wt = cancel__until_token(&u);
    /* noinvoke: run inline on a cancelled token, the callback would wait for
     * this very thread to release the mutex. */
    if (cancel__hook_arm(&w.hook, wt, NULL, wake, &w, true) != 0) {
        err = cancel__until_check(&u);
        cancel__until_end(&u);
        return err ? err : ECANCELED;
    }
    bool registered = w.hook.armed;

    int64_t deadline = cancel__until_kernel_deadline(&u);
    if ((!w.tid || !CANCEL__STORES_IN_ORDER) && registered) {
        int64_t slice = cancel__add_sat(cancel__clock_ns(), SLICE_NS);
        if (deadline < 0 || slice < deadline)
            deadline = slice;
    }
    cancel__blocked_enter("cancel_cond_wait", -1);
    struct ending end = {&w, &u};
    int r;
    /* pthread_cond_wait is a pthread cancellation point: if the thread is
     * cancelled there (the mutex is then held again), end() unhooks us as
     * a return does, so that nothing points into this frame afterwards. */
    pthread_cleanup_push(end_wait, &end);
    if (deadline < 0) {
        r = pthread_cond_wait(cond, mutex);
    } else {
        struct timespec ts = to_timespec(deadline);
        r = pthread_cond_clockwait(cond, mutex, CLOCK_MONOTONIC, &ts);
    }
    pthread_cleanup_pop(0);
    int why = end_wait_check(&end);
    if (r != 0 && r != ETIMEDOUT)
        return r; /* EPERM, EOWNERDEAD: news about the mutex the caller must not miss */
    if (why)
        return why; /* ECANCELED wins over a wake-up; ETIMEDOUT over a spurious one */
    if (r == ETIMEDOUT)
        return deadline == cancel__until_kernel_deadline(&u) ? ETIMEDOUT : 0; /* a slice ended: spurious */
    return r;
}
