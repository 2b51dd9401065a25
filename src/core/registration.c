/*
 * Callback registration and removal.
 *
 * A registration is an intrusive node in the caller's storage, linked into
 * its source's list under the source lock: registering costs one CAS (the
 * lock) and no allocation. Its `src` field says where it is registered and
 * becomes NULL once it is inert; `pprev` says whether it is still in the
 * list (never started) or was popped by a dispatcher (running or done).
 *
 * Waiting for a running callback that could not be prevented, and the
 * deadlock rule, are callback_wait.c's.
 */
#include "callback_wait.h"
#include "lock.h"
#include "ref.h"
#include "worker.h"

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
         * request.c); otherwise the lock orders us with the dispatcher. */
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
    struct cancel__frame *f = cancel__running_frame(s, r);
    bool pinned = false, deadlock = false;
    if (f && wait && f->thread != cancel__self()) { /* not from inside it */
        cancel__retain(s);
        pinned = true;
        deadlock = cancel__wait_for_callback(s, r, &held);
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
