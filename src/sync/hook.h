/*
 * What the blocking calls of sync/ share: the cancellation hook of a thread
 * about to sleep (hook.c).
 *
 * A waiter registers one callback on its until-token (block.h) only once it
 * is about to sleep. The callback's state lives on the waiter's stack, and
 * the waiter must not return while the callback still touches it or the
 * object it sleeps on. Waiting for the callback to return (cancel_unregister)
 * would cost the woken waiter a second sleep: the callback wakes it from
 * inside a system call, and returns only after that call does. So the
 * callback sets `done` as soon as it no longer touches any memory but the
 * futex address it hands to the kernel (a private FUTEX_WAKE reads no
 * memory, so an object freed meanwhile is harmless: at worst a spurious
 * wake-up for whoever reuses the address), and the waiter spins briefly
 * for `done` before falling back to cancel_unregister.
 */
#ifndef CANCEL_SYNC_HOOK_H
#define CANCEL_SYNC_HOOK_H

#include "block/block.h"

struct cancel__hook {
    cancel_registration reg;
    _Atomic uint32_t *word; /* r/o: the futex word the callback bumps and wakes; NULL: custom callback */
    _Atomic int done;       /* set by the callback when it no longer touches the waiter's memory */
    bool armed;             /* the waiter's: reg is registered */
};

/* Registers cancel__hook_wake (bump *word, wake all its sleepers) on
 * `tok`, or `fn` with `arg` if fn is not NULL (fn must set h->done, with
 * release order, once it no longer touches the waiter's memory). Does
 * nothing for CANCEL_TOKEN_NONE. A callback that runs inline (the token is
 * already cancelled) only wakes: the caller's next check sees the
 * cancellation. With `noinvoke`, it does not run inline and ECANCELED is
 * returned instead; otherwise returns 0. */
CANCEL_HIDDEN int cancel__hook_arm(struct cancel__hook *h, cancel_token tok, _Atomic uint32_t *word,
                                   cancel_fn *fn, void *arg, bool noinvoke);
/* Ends the hook: when this returns, the callback never runs or no longer
 * touches the waiter's memory. `tok` is the token armed on, still valid. */
CANCEL_HIDDEN void cancel__hook_disarm(struct cancel__hook *h, cancel_token tok);
/* The wake-up itself: bumps *word (release: a sleeper whose acquire load
 * reads the bump sees what the waker did before) and wakes n sleepers. */
static inline void cancel__hook_bump_wake(_Atomic uint32_t *word, int n)
{
    atomic_fetch_add_explicit(word, 1, memory_order_release);
    cancel__futex_wake(word, n);
}

#endif
