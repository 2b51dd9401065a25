/*
 * Waiting for a running callback, both sides.
 *
 * cancel_unregister must not return while the callback runs on another
 * thread. The dispatcher records the running registration in s->running (a
 * frame naming the dispatcher's thread, dispatch.c); the unregistering
 * thread sets ST_UNREG_WAITERS under the lock and sleeps on a futex word
 * hashed by source, which the dispatcher bumps, under the same lock, when the
 * callback returns. Both sides act under the lock, so no wake is lost; a
 * hash collision costs a spurious wake-up.
 *
 * Deadlock rule. A waiting thread records "I wait for thread T" in a small
 * global waits-for graph (a mutex-protected list, touched only on this slow
 * path). Before waiting, a thread follows the edges from T; if they lead
 * back to itself, waiting would close a cycle, so it refuses. Callbacks that
 * unregister each other across two cancelling threads therefore always
 * finish: the second of the two sees the cycle. A wait is over as soon as
 * the awaited callback returns: the dispatcher clears the waiter's edge then,
 * before the waiter runs again, so that a wait that closes no cycle is never
 * refused.
 *
 * Lock order: a source lock, then graph_mu. Nothing is taken under graph_mu.
 */
#include "callback_wait.h"

#include <limits.h>
#include <pthread.h>

static struct {
    _Atomic uint32_t seq;
    char pad[64 - sizeof(uint32_t)];
} wake_words[32];

static _Atomic uint32_t *wake_word(struct cancel_source *s)
{
    uintptr_t h = (uintptr_t)s >> 6;
    h ^= h >> 7;
    return &wake_words[h % 32].seq;
}

/* The waits-for graph: one node per thread blocked in cancel_unregister. */
struct waiter {
    const void *thread; /* cancel__self() of the waiting thread */
    const void *target; /* the thread running the callback it waits for; NULL
                           once that callback returned (the waiter may not
                           have run yet, but it no longer waits) */
    struct cancel_source *src;
    struct cancel__reg *reg; /* the callback it waits for */
    struct waiter *next;
};
static pthread_mutex_t graph_mu = PTHREAD_MUTEX_INITIALIZER;
static struct waiter *graph; /* under graph_mu */

void cancel__callback_wait_atfork_prepare(void)
{
    pthread_mutex_lock(&graph_mu);
}
void cancel__callback_wait_atfork_parent(void)
{
    pthread_mutex_unlock(&graph_mu);
}
void cancel__callback_wait_atfork_child(void)
{
    /* The waiting threads are gone with the parent's other threads. */
    graph = NULL;
    pthread_mutex_unlock(&graph_mu);
}

/* Under graph_mu: would `me` waiting for `target` close a cycle? */
static bool closes_cycle(const void *me, const void *target)
{
    size_t hops = 0, limit = 0;
    for (struct waiter *w = graph; w; w = w->next)
        limit++;
    for (const void *t = target; hops <= limit; hops++) {
        if (t == me)
            return true;
        struct waiter *w = graph;
        while (w && w->thread != t)
            w = w->next;
        if (!w || !w->target)
            return false;
        t = w->target;
    }
    return false;
}

void cancel__callback_waiters_wake_locked(struct cancel_source *s, struct cancel__reg *r)
{
    _Atomic uint32_t *w = cancel__word(s);
    /* Their wait is over now, even before they run: a cycle check must not
     * count it. */
    pthread_mutex_lock(&graph_mu);
    for (struct waiter *g = graph; g; g = g->next)
        if (g->src == s && g->reg == r)
            g->target = NULL;
    pthread_mutex_unlock(&graph_mu);
    atomic_fetch_and_explicit(w, ~(uint32_t)ST_UNREG_WAITERS, memory_order_relaxed);
    _Atomic uint32_t *seq = wake_word(s);
    /* relaxed: under the source lock; the futex compares the word. */
    atomic_fetch_add_explicit(seq, 1, memory_order_relaxed);
    cancel__futex_wake(seq, INT_MAX);
}

bool cancel__wait_for_callback(struct cancel_source *s, struct cancel__reg *r, cancel__held *held)
{
    struct cancel__frame *f = cancel__running_frame(s, r);
    const void *me = cancel__self();
    struct waiter w = {me, f->thread, s, r, NULL};
    pthread_mutex_lock(&graph_mu);
    if (closes_cycle(me, w.target)) {
        pthread_mutex_unlock(&graph_mu);
        return true;
    }
    w.next = graph;
    graph = &w;
    pthread_mutex_unlock(&graph_mu);

    _Atomic uint32_t *seq = wake_word(s);
    while (cancel__running_frame(s, r)) {
        atomic_fetch_or_explicit(cancel__word(s), ST_UNREG_WAITERS, memory_order_relaxed);
        uint32_t v = atomic_load_explicit(seq, memory_order_relaxed);
        cancel__source_unlock(s, *held);
        cancel__futex_wait(seq, v, -1);
        *held = cancel__source_lock(s);
    }

    pthread_mutex_lock(&graph_mu);
    struct waiter **pp = &graph;
    while (*pp != &w)
        pp = &(*pp)->next;
    *pp = w.next;
    pthread_mutex_unlock(&graph_mu);
    return false;
}
