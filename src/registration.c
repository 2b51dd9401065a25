/*
 * Callback registration and removal.
 *
 * A registration is an intrusive node in the caller's storage, linked into
 * its source's list under the source lock: registering costs one CAS (the
 * lock) and no allocation. Its `src` field says where it is registered and
 * becomes NULL once it is inert; `pprev` says whether it is still in the
 * list (never started) or was popped by a dispatcher (running or done).
 *
 * Waiting for a running callback. cancel_unregister must not return while
 * the callback runs on another thread. The dispatcher records the running
 * registration in s->running (a frame naming the dispatcher's thread); the
 * unregistering thread sets ST_UNREG_WAITERS under the lock and sleeps on a
 * hashed futex word that the dispatcher bumps, under the same lock, when the
 * callback returns. Both sides act under the lock, so no wake is lost.
 *
 * Deadlock rule. A waiting thread records "I wait for thread T" in a small
 * global waits-for graph (a mutex-protected list, touched only on this slow
 * path). Before waiting, a thread follows the edges from T; if they lead
 * back to itself, waiting would close a cycle, so it returns EDEADLK
 * instead. Callbacks that unregister each other across two cancelling
 * threads therefore always finish: the second of the two sees the cycle.
 */
#include "internal.h"
#include "lock.h"
#include "platform.h"

#include <pthread.h>

static int register_impl(cancel_token tok, cancel_registration *pub, cancel_fn *fn, void *arg, bool invoke)
{
    struct cancel__reg *r = (struct cancel__reg *)(void *)pub;
    if (!r || !fn)
        return EINVAL;
    if (CANCEL_DEBUG && r->tag == cancel__tag(r, TAG_LISTED) && atomic_load(&r->src))
        cancel__misuse("cancel_register", "registration storage reused while still registered", r);
    r->next = NULL;
    r->pprev = NULL;
    r->fn = fn;
    r->arg = arg;
    r->tag = 0;
    atomic_store_explicit(&r->src, NULL, memory_order_relaxed);

    struct cancel_source *s = cancel__source_of(tok);
    if (!s)
        return 0;
    /* acquire: if cancelled, what the canceller wrote is visible to fn. */
    uint32_t st = atomic_load_explicit(cancel__word(s), memory_order_acquire);
    if (!(st & (ST_REQUESTED | ST_DEAD))) {
        /* A registration may need the library thread (cancel_async). The
         * seq_cst load pairs with cancel_source_cancel_async. */
        if (cancel__unlikely(!cancel__worker_running()))
            (void)cancel__worker_ensure(); /* on failure: retried by the next caller */
        cancel__held held = cancel__source_lock(s);
        /* seq_cst: second half of the Dekker pair with cancel_async (see
         * dispatch.c); otherwise the lock orders us with the dispatcher. */
        st = atomic_load_explicit(cancel__word(s), memory_order_seq_cst);
        if (!(st & (ST_REQUESTED | ST_DEAD))) {
            cancel__list_push(s, r);
            cancel__set_tag(r, TAG_LISTED);
            atomic_store_explicit(&r->src, s, memory_order_relaxed);
            cancel__source_unlock(s, held);
            return 0;
        }
        cancel__source_unlock(s, held);
    }
    if (st & ST_DEAD)
        return 0; /* can never be cancelled: inert */
    if (invoke)
        fn(arg);
    return ECANCELED;
}

int cancel_register(cancel_token tok, cancel_registration *reg, cancel_fn *fn, void *arg)
{
    return register_impl(tok, reg, fn, arg, true);
}

int cancel_register_noinvoke(cancel_token tok, cancel_registration *reg, cancel_fn *fn, void *arg)
{
    return register_impl(tok, reg, fn, arg, false);
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
static struct waiter *graph;

void cancel__graph_atfork_prepare(void)
{
    pthread_mutex_lock(&graph_mu);
}
void cancel__graph_atfork_parent(void)
{
    pthread_mutex_unlock(&graph_mu);
}
void cancel__graph_atfork_child(void)
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

void cancel__graph_callback_returned(struct cancel_source *s, struct cancel__reg *r)
{
    pthread_mutex_lock(&graph_mu);
    for (struct waiter *w = graph; w; w = w->next)
        if (w->src == s && w->reg == r)
            w->target = NULL;
    pthread_mutex_unlock(&graph_mu);
}

static struct cancel__frame *running_frame(struct cancel_source *s, struct cancel__reg *r)
{
    struct cancel__frame *f = s->running;
    return f && f->reg == r ? f : NULL;
}

/* Under s->lock, held as *held (released while sleeping): waits until r's
 * callback, which a dispatcher popped and which runs on another thread, is
 * no longer running, unless that would deadlock (then returns true at once).
 * The caller holds a reference on s: the callback may free its own source. */
static bool wait_for_callback(struct cancel_source *s, struct cancel__reg *r, cancel__held *held)
{
    struct cancel__frame *f = running_frame(s, r);
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

    _Atomic uint32_t *seq = cancel__dispatch_seq(s);
    while (running_frame(s, r)) {
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

static bool unregister_impl(cancel_registration *pub, bool wait)
{
    struct cancel__reg *r = (struct cancel__reg *)(void *)pub;
    if (!r) {
        errno = EINVAL;
        return false;
    }
    /* acquire: pairs with the release store that made it inert (reset or
     * free), which wrote the storage last. */
    struct cancel_source *where = atomic_load_explicit(&r->src, memory_order_acquire);
    if (!where)
        return false;
    struct cancel_source *s = cancel__untag(where);
    cancel__held held = cancel__source_lock(s);
    where = atomic_load_explicit(&r->src, memory_order_relaxed);
    if (where == s) {
        /* Listed: nobody else may write the storage while s is locked. */
        if (CANCEL_DEBUG && r->tag != cancel__tag(r, TAG_LISTED))
            cancel__misuse(wait ? "cancel_unregister" : "cancel_unregister_nowait",
                           "storage that is not a registration (never registered, or overwritten)", r);
        cancel__list_remove(r);
        atomic_store_explicit(&r->src, NULL, memory_order_relaxed);
        cancel__set_tag(r, 0);
        cancel__source_unlock(s, held);
        return true;
    }
    if (where != cancel__popped(s)) {
        cancel__source_unlock(s, held); /* made inert, removed, or registered elsewhere */
        return false;
    }
    /* Popped by a dispatcher: running, or done. The storage is neither read
     * nor written from here on: once its callback has started it may belong
     * to someone else (the callback may have freed it, or registered it
     * again). Concurrent callers find the source and wait too; later ones
     * need the token valid, as the header says. */
    struct cancel__frame *f = running_frame(s, r);
    bool pinned = false, deadlock = false;
    if (f && wait && f->thread != cancel__self()) { /* not from inside it */
        cancel__retain(s);
        pinned = true;
        deadlock = wait_for_callback(s, r, &held);
    }
    cancel__source_unlock(s, held);
    if (pinned)
        cancel__release(s);
    if (deadlock)
        errno = EDEADLK; /* errno is otherwise left alone (platform.h) */
    return false;
}

bool cancel_unregister(cancel_registration *reg)
{
    return unregister_impl(reg, true);
}

bool cancel_unregister_nowait(cancel_registration *reg)
{
    return unregister_impl(reg, false);
}
