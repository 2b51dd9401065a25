/*
 * The cancellation hook of a sleeping waiter (hook.h has the argument).
 *
 * Locking and lifetime: no lock. The hook lives on the waiter's stack; the
 * callback reads it until it stores `done` (release), which pairs with the
 * waiter's acquire load in cancel__hook_disarm; after that store it only
 * passes the futex word's address to the kernel.
 */
#include "sync/hook.h"

#include <limits.h>
#include <sched.h>

#define DISARM_SPIN_NS 2000   /* spin for `done` this long, */
#define DISARM_YIELD_NS 20000 /* then yield the CPU until this long, then sleep in cancel_unregister */

static void hook_wake(void *arg)
{
    struct cancel__hook *h = arg;
    _Atomic uint32_t *word = h->word;
    atomic_fetch_add_explicit(word, 1, memory_order_release); /* see cancel__hook_bump_wake */
    atomic_store_explicit(&h->done, 1, memory_order_release);
    cancel__futex_wake(word, INT_MAX); /* the address only, see hook.h */
}

/* Whether the callback is through with the waiter's memory within a
 * bounded wait: pauses for DISARM_SPIN_NS, then yields of the CPU until
 * DISARM_YIELD_NS. The callback sets `done` a few hundred nanoseconds after
 * it started, except cond.c's, which sets it once its pthread_cond_broadcast
 * returned: a system call that woke us and, on a virtual machine, returns
 * microseconds after we are awake; and if we were woken onto the
 * canceller's CPU, it cannot return before we yield. */
static bool wait_for_done(struct cancel__hook *h)
{
    int64_t start = 0;
    for (unsigned i = 0;; i++) {
        /* acquire: pairs with the callback's release store of done. */
        if (atomic_load_explicit(&h->done, memory_order_acquire))
            return true;
        if (i % 16 == 0) {
            int64_t now = cancel__clock_ns();
            if (!start)
                start = now;
            else if (now - start > DISARM_YIELD_NS)
                return false;
            else if (now - start > DISARM_SPIN_NS)
                sched_yield();
        }
        cancel__cpu_relax();
    }
}

int cancel__hook_arm(struct cancel__hook *h, cancel_token tok, _Atomic uint32_t *word, cancel_fn *fn, void *arg,
                     bool noinvoke)
{
    h->word = word;
    atomic_init(&h->done, 0);
    h->armed = false;
    if (!tok.cancel__impl)
        return 0;
    if (!fn) {
        fn = hook_wake;
        arg = h;
    }
    int err = noinvoke ? cancel_register_noinvoke(tok, &h->reg, fn, arg) : cancel_register(tok, &h->reg, fn, arg);
    h->armed = err == 0;
    return noinvoke ? err : 0;
}

void cancel__hook_disarm(struct cancel__hook *h, cancel_token tok)
{
    if (!h->armed)
        return;
    h->armed = false;
    /* acquire: pairs with the callback's release store. Once done is set,
     * the callback has started, so the library no longer touches the
     * registration (<cancel.h>): nothing to unregister. */
    if (atomic_load_explicit(&h->done, memory_order_acquire))
        return;
    if (cancel_token_is_requested(tok)) {
        /* A cancellation is under way: our callback is running or about to.
         * Unregistering now would cut into the canceller's dispatch, which
         * costs both threads more than a short wait. */
        if (!wait_for_done(h))
            cancel_unregister(&h->reg); /* removes it, or waits for it to return */
        return;
    }
    if (cancel_unregister_nowait(&h->reg))
        return; /* removed before it started */
    /* It started after all (a cancellation since our check), or it is inert
     * (its source was freed uncancelled, or reset), and never runs: a token
     * whose callback started reads as cancelled now (the dispatcher set the
     * request before popping the callback, under the lock we took since). */
    if (cancel_token_is_requested(tok) && !wait_for_done(h))
        cancel_unregister(&h->reg);
}
