/*
 * Requesting cancellation and running the callbacks.
 *
 * cancel__mark is the only way REQUESTED or DEAD gets set: one CAS loop on
 * the state word, lock-free and AS-safe. The CAS that wins reads, in the
 * same step, whether a waiter sleeps on the word or a descriptor exists, and
 * wakes them.
 *
 * cancel__dispatch then empties the list of the source under its lock, one
 * callback at a time: pop the newest registration, record it in `running`
 * (a frame on the dispatcher's stack), unlock, call, lock again. A
 * registration that unregister finds still in the list was never started;
 * one that is not is running or done, which `running` tells apart. The
 * registration's storage is not touched once its callback starts.
 *
 * Linked children register a link (fn == cancel__link_fire) on each parent.
 * Popping a link cancels the child and pushes it on an explicit stack of
 * sources threaded through next_pending, so a tree of any depth is walked
 * depth first without recursion: the child's callbacks run where its link
 * stood in the parent's order, before the parent's older callbacks.
 */
#include "internal.h"
#include "lock.h"
#include "platform.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static struct {
    _Atomic uint32_t seq;
    char pad[64 - sizeof(uint32_t)];
} dispatch_seqs[32];

_Atomic uint32_t *cancel__dispatch_seq(struct cancel_source *s)
{
    uintptr_t h = (uintptr_t)s >> 6;
    h ^= h >> 7;
    return &dispatch_seqs[h % 32].seq;
}

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
         * seq_cst orders it before cancel__worker_wanted() in
         * cancel_source_cancel_async (the Dekker pair described there). */
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

void cancel__wake_unregister_waiters_locked(struct cancel_source *s, struct cancel__reg *returned)
{
    _Atomic uint32_t *w = cancel__word(s);
    /* The bit is set and cleared only under the lock we hold. */
    if (atomic_load_explicit(w, memory_order_relaxed) & ST_UNREG_WAITERS) {
        /* Their wait is over now, even before they run: a cycle check must
         * not count it (registration.c). */
        cancel__graph_callback_returned(s, returned);
        atomic_fetch_and_explicit(w, ~(uint32_t)ST_UNREG_WAITERS, memory_order_relaxed);
        _Atomic uint32_t *seq = cancel__dispatch_seq(s);
        atomic_fetch_add_explicit(seq, 1, memory_order_relaxed);
        cancel__futex_wake(seq, INT_MAX);
    }
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
    struct cancel_source *top = root;
    root->next_pending = NULL;
    while (top) {
        struct cancel_source *s = top;
        if (atomic_load_explicit(&s->timer_slot, memory_order_relaxed))
            cancel__timer_disarm(s);
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
            fn(arg);
            cs_enter(s, biased);
            s->running = NULL;
            cancel__wake_unregister_waiters_locked(s, r);
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

static bool cancel_sync(cancel_source *s, uint32_t bits, const char *function)
{
    if (!s || !cancel__source_usable(s, function)) {
        errno = EINVAL;
        return false;
    }
    if (!cancel__mark(s, ST_REQUESTED | bits))
        return false;
    /* The dispatch holds its own reference: a callback may free the source. */
    cancel__retain(s);
    cancel__dispatch(s);
    return true;
}

bool cancel_source_cancel(cancel_source *s)
{
    return cancel_sync(s, cancel__reason_bits(CANCEL_REASON_REQUESTED, 0), "cancel_source_cancel");
}

bool cancel_source_fail(cancel_source *s, int code, const char *message)
{
    if (!s || !cancel__source_usable(s, "cancel_source_fail")) {
        errno = EINVAL;
        return false;
    }
    if (atomic_load_explicit(cancel__word(s), memory_order_relaxed) & (ST_REQUESTED | ST_DEAD))
        return false;
    char *copy = NULL;
    struct cancel__extra *ex = NULL;
    bool oom = false;
    if (message) {
        copy = strdup(message);
        ex = cancel__extra_get(s);
        if (!copy || !ex) {
            free(copy);
            copy = NULL;
            oom = true;
        }
    }
    /* Under the lock, fail calls are serialised: the message and code are
     * written before the CAS that publishes them, and only by the one call
     * that can still win. A lock-free canceller may still win the CAS; then
     * the fields are never read (the reason is not FAILED) and we take the
     * message back. */
    cancel__held held = cancel__source_lock(s);
    bool won = false;
    if (!(atomic_load_explicit(cancel__word(s), memory_order_relaxed) & (ST_REQUESTED | ST_DEAD))) {
        s->code = code;
        if (copy)
            ex->message = copy;
        won = cancel__mark(s, ST_REQUESTED | cancel__reason_bits(CANCEL_REASON_FAILED, 0));
        if (!won && copy)
            ex->message = NULL;
    }
    cancel__source_unlock(s, held);
    if (!won) {
        free(copy);
        return false;
    }
    cancel__retain(s);
    cancel__dispatch(s);
    if (oom)
        errno = ENOMEM;
    return true;
}

static bool cancel_async(cancel_source *s, uint32_t bits)
{
    int saved = errno;
    bool won = cancel__mark(s, ST_REQUESTED | bits);
    /* Queue the dispatch only if a callback can exist: every registration
     * (and every deadline) first makes the worker wanted. Both sides are
     * seq_cst (the CAS in cancel__mark, the flag's store and the state load
     * under the lock in registration), so either we see the flag or the
     * registration sees REQUESTED and runs inline. Not queueing when nothing
     * can be pending keeps a process that never registers free of threads
     * and of references held by a queue nobody drains. */
    if (won && cancel__worker_wanted()) {
        cancel__retain(s);
        cancel__worker_post(s);
    }
    errno = saved;
    return won;
}

bool cancel_source_cancel_async(cancel_source *s)
{
    if (!s || !cancel__source_usable(s, "cancel_source_cancel_async")) {
        errno = EINVAL;
        return false;
    }
    return cancel_async(s, cancel__reason_bits(CANCEL_REASON_REQUESTED, 0));
}

bool cancel_source_cancel_signal(cancel_source *s, int signo)
{
    if (!s || signo <= 0 || signo > 255 || !cancel__source_usable(s, "cancel_source_cancel_signal")) {
        errno = EINVAL;
        return false;
    }
    return cancel_async(s, cancel__reason_bits(CANCEL_REASON_SIGNAL, signo));
}
