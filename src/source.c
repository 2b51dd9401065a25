/*
 * Source lifecycle: creation, references, freeing, names, reset, info.
 *
 * A plain source is one allocation of 56 bytes (a 64-byte malloc chunk).
 * Freeing the last handle with nobody else holding a reference takes no
 * atomic read-modify-write at all: with a reference count of one, no other
 * thread may legally look at the source (borrowed tokens die with it), so
 * there is nobody to tell.
 */
#include "internal.h"
#include "lock.h"
#include "platform.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(struct cancel_source) <= 56, "a source fits a 64-byte malloc chunk");

static _Thread_local char self_tag;
const void *cancel__self(void)
{
    return &self_tag;
}

void cancel__source_init(struct cancel_source *s, uint32_t state)
{
    atomic_init(&s->head.cancel__word, state);
    atomic_init(&s->refs, 1);
    atomic_init(&s->lock, 0);
    atomic_init(&s->timer_slot, 0);
    s->code = 0;
    s->children = 0;
    s->regs = NULL;
    s->running = NULL;
    atomic_init(&s->extra, NULL);
    s->next_pending = NULL;
}

cancel_source *cancel_source_new(void)
{
    struct cancel_source *s = malloc(sizeof *s);
    if (!s) {
        errno = ENOMEM;
        return NULL;
    }
    cancel__source_init(s, 0);
    return s;
}

cancel_token cancel_source_token(const cancel_source *src)
{
    cancel_token t = {src ? (struct cancel__state *)&src->head : NULL};
    return t;
}

void cancel__retain(struct cancel_source *s)
{
    /* relaxed: taking a reference publishes nothing; the caller already
     * holds one (or the lock that keeps the source alive). */
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void cancel__release(struct cancel_source *s)
{
    uint32_t r = atomic_load_explicit(&s->refs, memory_order_relaxed);
    for (;;) {
        if ((r & REFS_COUNT) == 1 && (r & REFS_CHILDREN)) {
            /* Last reference while children may still point here: decide
             * under the lock, where cancel__unhook decides too. */
            cancel__held held = cancel__source_lock(s);
            atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel);
            bool last = s->children == 0;
            cancel__source_unlock(s, held);
            if (last)
                cancel__destroy(s);
            return;
        }
        /* acq_rel: release our writes to whoever destroys; acquire theirs if
         * we do. A CAS rather than fetch_sub so that REFS_CHILDREN, set under
         * the lock, cannot appear between our look and our decrement. */
        if (atomic_compare_exchange_weak_explicit(&s->refs, &r, r - 1, memory_order_acq_rel,
                                                  memory_order_relaxed))
            break;
    }
    if ((r & REFS_COUNT) == 1)
        cancel__destroy(s);
}

#if CANCEL_DEBUG
#include <pthread.h>
/* Debug builds keep the last freed sources, marked freed, so that a double
 * free or a use after free is reported instead of corrupting memory. */
static pthread_mutex_t quarantine_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cancel_source *quarantine[4096];
static size_t quarantine_next;
static void quarantine_or_free(struct cancel_source *s)
{
    atomic_store_explicit(cancel__word(s), ST_FREED | ST_DEAD, memory_order_relaxed);
    pthread_mutex_lock(&quarantine_mu);
    struct cancel_source *old = quarantine[quarantine_next];
    quarantine[quarantine_next] = s;
    quarantine_next = (quarantine_next + 1) % (sizeof quarantine / sizeof quarantine[0]);
    pthread_mutex_unlock(&quarantine_mu);
    free(old);
}
#else
static void quarantine_or_free(struct cancel_source *s)
{
    free(s);
}
#endif

void cancel__destroy(struct cancel_source *s)
{
    /* Iterative: an origin released here may be the last reference to it,
     * and so on. */
    while (s) {
        struct cancel_source *next = NULL;
        struct cancel__extra *ex = atomic_load_explicit(&s->extra, memory_order_acquire);
        if (ex) {
            free(atomic_load_explicit(&ex->name, memory_order_relaxed));
            free(ex->message);
            int fd = atomic_load_explicit(&ex->fd, memory_order_relaxed);
            if (fd >= 0)
                cancel__fd_close(fd);
            free(ex);
        }
        if (atomic_load_explicit(cancel__word(s), memory_order_relaxed) & ST_LINKED) {
            struct cancel_source *o = ((struct cancel__linked *)s)->origin;
            if (o) {
                uint32_t r = atomic_load_explicit(&o->refs, memory_order_relaxed);
                if ((r & REFS_COUNT) == 1 && !(r & REFS_CHILDREN) &&
                    atomic_compare_exchange_strong_explicit(&o->refs, &r, 0, memory_order_acq_rel,
                                                            memory_order_relaxed))
                    next = o;
                else
                    cancel__release(o);
            }
        }
        quarantine_or_free(s);
        s = next;
    }
}

struct cancel__extra *cancel__extra_get(struct cancel_source *s)
{
    /* acquire: pairs with the release CAS below, so the fields are seen
     * initialised. */
    struct cancel__extra *ex = atomic_load_explicit(&s->extra, memory_order_acquire);
    if (ex)
        return ex;
    struct cancel__extra *n = malloc(sizeof *n);
    if (!n) {
        errno = ENOMEM;
        return NULL;
    }
    atomic_init(&n->name, NULL);
    n->message = NULL;
    atomic_init(&n->fd, -1);
    if (atomic_compare_exchange_strong_explicit(&s->extra, &ex, n, memory_order_acq_rel,
                                                memory_order_acquire))
        return n;
    free(n);
    return ex;
}

void cancel__make_inert_locked(struct cancel_source *s, bool keep_links)
{
    struct cancel__reg **pp = &s->regs;
    while (*pp) {
        struct cancel__reg *r = *pp;
        if (keep_links && r->fn == cancel__link_fire) {
            pp = &r->next;
            continue;
        }
        cancel__list_remove(r);
        /* A child's link keeps pointing here and stays counted in
         * s->children until the child unhooks (cancel__unhook). */
        cancel__set_tag(r, 0);
        if (r->fn != cancel__link_fire)
            /* release: pairs with the acquire load in cancel_unregister, so
             * that a caller who then reuses the storage comes after our
             * writes to it. */
            atomic_store_explicit(&r->src, NULL, memory_order_release);
    }
}

void cancel_source_free(cancel_source *s)
{
    if (!s)
        return;
    uint32_t st = atomic_load_explicit(cancel__word(s), memory_order_relaxed);
    if (cancel__unlikely(st & ST_FREED)) {
        if (CANCEL_DEBUG)
            cancel__misuse("cancel_source_free", "double free of a source", s);
        return; /* release builds: ignored while retained tokens keep it */
    }
    /* First stop every internal actor that could start cancelling s: its
     * parents' dispatchers and the timer. */
    if (st & ST_LINKED)
        cancel__unhook((struct cancel__linked *)s);
    /* acquire: pairs with the release store in cancel__timer_fire_due, so
     * that a deadline firing right now has its reference counted below. */
    if (atomic_load_explicit(&s->timer_slot, memory_order_acquire))
        cancel__timer_disarm(s);

    /* acquire: pairs with the acq_rel decrements of earlier holders. */
    if (atomic_load_explicit(&s->refs, memory_order_acquire) == 1) {
        /* Sole reference, no children: nobody else may look at s now,
         * except a poller of the descriptor: tell it before it is closed. */
        st = atomic_load_explicit(cancel__word(s), memory_order_relaxed);
        if ((st & (ST_HAS_FD | ST_REQUESTED)) == ST_HAS_FD)
            cancel__eventfd_signal(atomic_load_explicit(&atomic_load_explicit(&s->extra, memory_order_acquire)->fd,
                                                        memory_order_relaxed));
        if (s->regs)
            cancel__make_inert_locked(s, false);
        cancel__destroy(s);
        return;
    }
    atomic_fetch_or_explicit(cancel__word(s), ST_FREED, memory_order_relaxed);
    if (cancel__mark(s, ST_DEAD)) {
        /* Freed uncancelled: its registrations will never run. */
        cancel__held held = cancel__source_lock(s);
        cancel__make_inert_locked(s, false);
        cancel__source_unlock(s, held);
    }
    /* Cancelled: a dispatch in progress or queued holds its own reference
     * and runs what is left. */
    cancel__release(s);
}

int cancel_source_set_name(cancel_source *s, const char *name)
{
    if (!s || !name || !cancel__source_usable(s, "cancel_source_set_name"))
        return EINVAL;
    struct cancel__extra *ex = cancel__extra_get(s);
    if (!ex)
        return ENOMEM;
    if (atomic_load_explicit(&ex->name, memory_order_relaxed))
        return EBUSY;
    char *copy = strdup(name);
    if (!copy)
        return ENOMEM;
    char *expected = NULL;
    /* release: pairs with the acquire loads of readers of the name. */
    if (!atomic_compare_exchange_strong_explicit(&ex->name, &expected, copy, memory_order_release,
                                                 memory_order_relaxed)) {
        free(copy);
        return EBUSY;
    }
    return 0;
}

const char *cancel_source_name(const cancel_source *s)
{
    if (!s || !cancel__source_usable((struct cancel_source *)s, "cancel_source_name"))
        return NULL;
    struct cancel__extra *ex = atomic_load_explicit(&((struct cancel_source *)s)->extra, memory_order_acquire);
    return ex ? atomic_load_explicit(&ex->name, memory_order_acquire) : NULL;
}

bool cancel_source_try_reset(cancel_source *s)
{
    if (!s || !cancel__source_usable(s, "cancel_source_try_reset")) {
        errno = EINVAL;
        return false;
    }
    /* Disarm first: a deadline that fires does so under the timer lock, so
     * after this either it has set REQUESTED (seen below) or it never will. */
    if (atomic_load_explicit(&s->timer_slot, memory_order_relaxed))
        cancel__timer_disarm(s);
    cancel__held held = cancel__source_lock(s);
    bool ok = !(atomic_load_explicit(cancel__word(s), memory_order_relaxed) & ST_REQUESTED);
    if (ok)
        cancel__make_inert_locked(s, true);
    cancel__source_unlock(s, held);
    return ok;
}

int cancel_source_get_info(const cancel_source *cs, cancel_source_info *out)
{
    struct cancel_source *s = (struct cancel_source *)cs;
    if (!s || !out || !cancel__source_usable(s, "cancel_source_get_info"))
        return EINVAL;
    memset(out, 0, sizeof *out);
    cancel__held held = cancel__source_lock(s);
    uint32_t st = atomic_load_explicit(cancel__word(s), memory_order_acquire);
    for (struct cancel__reg *r = s->regs; r; r = r->next)
        if (r->fn == cancel__link_fire)
            out->children++;
        else
            out->registrations++;
    cancel__source_unlock(s, held);
    if (st & ST_REQUESTED)
        out->reason = cancel__reason_of(st);
    if (st & ST_LINKED) {
        struct cancel__linked *l = (struct cancel__linked *)s;
        for (size_t i = 0; i < l->nlinks; i++) {
            /* A linked parent's memory stays while our link points at it. */
            struct cancel_source *p = atomic_load_explicit(&l->links[i].src, memory_order_relaxed);
            if (p && !(atomic_load_explicit(cancel__word(p), memory_order_acquire) & (ST_REQUESTED | ST_DEAD)))
                out->parents++;
        }
    }
    /* A cancelled source has no deadline left to wait for, whatever entry a
     * racing cancel_source_cancel_after may have left (timer.c). */
    out->deadline_ns = (st & ST_REQUESTED) ? CANCEL_INFINITE : cancel__timer_remaining(s);
    return 0;
}

const char *cancel_reason_name(cancel_reason r)
{
    switch (r) {
    case CANCEL_REASON_NONE: return "none";
    case CANCEL_REASON_REQUESTED: return "requested";
    case CANCEL_REASON_TIMEOUT: return "timeout";
    case CANCEL_REASON_FAILED: return "failed";
    case CANCEL_REASON_SIGNAL: return "signal";
    }
    return "unknown";
}
