/*
 * Waiting for a running callback (callback_wait.c): what lets
 * cancel_unregister return only once the callback it could not prevent has
 * returned, and refuse (EDEADLK) a wait that would close a cycle.
 */
#ifndef CANCEL_CORE_CALLBACK_WAIT_H
#define CANCEL_CORE_CALLBACK_WAIT_H

#include "lock.h"

/* Under s->lock: the frame running r's callback, or NULL. */
static inline struct cancel__frame *cancel__running_frame(struct cancel_source *s, struct cancel__reg *r)
{
    struct cancel__frame *f = s->running;
    return f && f->reg == r ? f : NULL;
}

/* The dispatcher's side, under s->lock: r's callback returned; wakes the
 * threads waiting for it. Inline: it is on the path of every callback, and
 * almost always nobody waits. */
CANCEL_HIDDEN void cancel__callback_waiters_wake_locked(struct cancel_source *s, struct cancel__reg *r);
static inline void cancel__callback_returned_locked(struct cancel_source *s, struct cancel__reg *r)
{
    /* The bit is set and cleared only under the lock the caller holds. */
    if (cancel__unlikely(atomic_load_explicit(cancel__word(s), memory_order_relaxed) & ST_UNREG_WAITERS))
        cancel__callback_waiters_wake_locked(s, r);
}

/* The unregistering side, under s->lock held as *held (released while
 * sleeping): waits until r's callback, running on another thread, returned.
 * Returns true at once, without waiting, if waiting would close a cycle of
 * threads waiting for each other's callbacks. The caller holds a reference
 * on s: the callback may free its own source. */
CANCEL_HIDDEN bool cancel__wait_for_callback(struct cancel_source *s, struct cancel__reg *r, cancel__held *held);

/* fork: the graph's mutex is held across fork and reset in the child. */
CANCEL_HIDDEN void cancel__callback_wait_atfork_prepare(void);
CANCEL_HIDDEN void cancel__callback_wait_atfork_parent(void);
CANCEL_HIDDEN void cancel__callback_wait_atfork_child(void);

#endif
