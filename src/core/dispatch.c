/*
 * Running the callbacks of a cancelled source and of its linked descendants.
 *
 * cancel__dispatch empties the list of the source under its lock, one
 * callback at a time: pop the newest registration, record it in `running`
 * (a frame on the dispatcher's stack), unlock, call, lock again. A
 * registration that unregister finds still in the list was never started;
 * one that is not is running or done, which `running` tells apart
 * (callback_wait.c). The registration's storage is not touched once its
 * callback starts.
 *
 * Linked children register a link (fn == cancel__link_fire) on each parent.
 * Popping a link cancels the child and pushes it on an explicit stack of
 * sources threaded through next_pending, so a tree of any depth is walked
 * depth first without recursion: the child's callbacks run where its link
 * stood in the parent's order, before the parent's older callbacks.
 *
 * Who calls it: the owner's cancel and fail (request.c) on the caller's
 * thread; the library thread (worker.c) for async cancels and deadlines.
 */
#include "dispatch.h"

#include "callback_wait.h"
#include "lock.h"
#include "ref.h"
#include "state.h"
#include "timer.h"

#include <stdlib.h>

/* Callbacks longer than this (ns) are counted; negative: not measured. */
static _Atomic int64_t slow_threshold = CANCEL_INFINITE;
static _Atomic size_t slow_callbacks;

int64_t cancel_set_slow_callback_threshold(int64_t ns)
{
    /* relaxed: read once per dispatch; no data hangs on it. */
    return atomic_exchange_explicit(&slow_threshold, ns < 0 ? CANCEL_INFINITE : ns, memory_order_relaxed);
}

size_t cancel__slow_callbacks(void)
{
    return atomic_load_explicit(&slow_callbacks, memory_order_relaxed);
}

static void call_timed(cancel_fn *fn, void *arg, int64_t threshold)
{
    int64_t t0 = cancel__clock_ns();
    fn(arg);
    if (cancel__clock_ns() - t0 > threshold)
        atomic_fetch_add_explicit(&slow_callbacks, 1, memory_order_relaxed);
}

bool cancel__cancel_from_parent(struct cancel__linked *child, struct cancel_source *parent)
{
    /* acquire: pairs with the parent's winning CAS, which published its
     * origin pointer (when ST_LINKED_CAUSE) and its reason. */
    uint32_t pst = atomic_load_explicit(cancel__word(parent), memory_order_acquire);
    struct cancel_source *origin = parent;
    if (pst & ST_LINKED_CAUSE)
        origin = ((struct cancel__linked *)parent)->origin;
    uint32_t bits = ST_REQUESTED | ST_LINKED_CAUSE | (pst & (ST_REASON_MASK | ST_SIGNO_MASK));

    struct cancel_source *c = &child->src;
    bool won = false;
    /* The lock serialises writers of child->origin: only one of them can
     * find the child uncancelled. If a lock-free canceller beats our CAS,
     * the origin stays unused and is released with the child. */
    cancel__held held = cancel__source_lock(c);
    if (!(atomic_load_explicit(cancel__word(c), memory_order_relaxed) & (ST_REQUESTED | ST_DEAD))) {
        cancel__retain(origin);
        child->origin = origin;
        won = cancel__mark(c, bits);
    }
    cancel__source_unlock(c, held);
    return won;
}

/* Entering and leaving a source's critical sections during its dispatch:
 * plain stores in biased mode (lock.h), the lock otherwise. */
static void cs_enter(struct cancel_source *s, bool biased)
{
    if (biased) {
        cancel__bias_enter_cs(s);
    } else {
        cancel__held intruder = cancel__source_lock(s);
        (void)intruder; /* only the dispatcher biases s, and that is us */
    }
}
static void cs_leave(struct cancel_source *s, bool biased)
{
    if (biased)
        cancel__bias_leave_cs(s);
    else
        cancel__source_unlock(s, false);
}

void cancel__dispatch(struct cancel_source *root)
{
    struct cancel__frame frame = {NULL, cancel__self()};
    int64_t threshold = atomic_load_explicit(&slow_threshold, memory_order_relaxed);
    struct cancel_source *top = root;
    root->next_pending = NULL;
    while (top) {
        struct cancel_source *s = top;
        if (cancel__timer_slot_live(atomic_load_explicit(&s->timer_slot, memory_order_relaxed)))
            cancel__timer_keep(s); /* it will not fire; its deadline is kept for reports */
        /* Back from a child, s is still biased by us; otherwise start. */
        bool biased = atomic_load_explicit(&s->lock, memory_order_relaxed) & LOCK_BIASED;
        cs_enter(s, biased);
        if (!biased && cancel__bias_available()) {
            cancel__bias_begin(s);
            biased = true;
        }
        struct cancel__reg *r;
        while ((r = s->regs) != NULL) {
            cancel__list_remove(r);
            cancel__set_tag(r, TAG_POPPED);
            if (r->fn == cancel__link_fire) {
                /* The child cannot go away: its unhook needs this lock and
                 * would find the link gone. */
                struct cancel__linked *child = r->arg;
                cancel__retain(&child->src);
                cs_leave(s, biased);
                if (cancel__cancel_from_parent(child, s)) {
                    child->src.next_pending = top;
                    top = &child->src;
                } else {
                    cancel__release(&child->src);
                }
                break;
            }
            frame.reg = r;
            s->running = &frame;
            cancel_fn *fn = r->fn;
            void *arg = r->arg;
            /* The last write to the storage: from here on only `src` is
             * read, and only atomically (registration.c). */
            atomic_store_explicit(&r->src, cancel__popped(s), memory_order_relaxed);
            cs_leave(s, biased);
            if (cancel__likely(threshold < 0))
                fn(arg);
            else
                call_timed(fn, arg, threshold);
            cs_enter(s, biased);
            s->running = NULL;
            cancel__callback_returned_locked(s, r);
        }
        if (r)
            continue; /* popped a link: s left; go on with `top` */
        if (biased)
            cancel__bias_end(s);
        else
            cancel__source_unlock(s, false);
        top = s->next_pending;
        cancel__release(s);
    }
}
