/*
 * Source lifecycle, as the owner sees it: creation, freeing, names, reset,
 * info. (The memory itself is ref.c's.)
 *
 * Freeing the last handle with nobody else holding a reference takes no
 * atomic read-modify-write at all: with a reference count of one, no other
 * thread may legally look at the source (borrowed tokens die with it), so
 * there is nobody to tell.
 */
#include "clock.h"
#include "link.h"
#include "lock.h"
#include "ref.h"
#include "state.h"
#include "timer.h"

#include <stdlib.h>
#include <string.h>

cancel_source *cancel_source_new(void)
{
    return cancel__source_create();
}

cancel_token cancel_source_token(const cancel_source *src)
{
    cancel_token t = {src ? (struct cancel__state *)&src->head : NULL};
    return t;
}

/* Under s->lock: detaches every registration, leaving them inert; children's
 * links too unless keep_links. */
static void make_inert_locked(struct cancel_source *s, bool keep_links)
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
    if (st & ST_LINKED) {
        /* Someone else may be walking up through s (cancel_token_deadline,
         * from a retained token or a child): FREED, set under s's lock,
         * tells the walker to leave s's links alone, which it reads under
         * that lock. Alone, nobody can be there. */
        if (atomic_load_explicit(&s->refs, memory_order_relaxed) != 1) {
            cancel__held held = cancel__source_lock(s);
            atomic_fetch_or_explicit(cancel__word(s), ST_FREED, memory_order_relaxed);
            cancel__source_unlock(s, held);
        }
        cancel__unhook((struct cancel__linked *)s);
    }
    /* acquire: pairs with the release store of the slot when the deadline
     * fires (timer.c), so that its dispatch's reference is counted below. */
    if (atomic_load_explicit(&s->timer_slot, memory_order_acquire))
        cancel__timer_disarm(s, true);

    /* acquire: pairs with the acq_rel decrements of earlier holders. */
    if (atomic_load_explicit(&s->refs, memory_order_acquire) == 1) {
        /* Sole reference, no children: nobody else may look at s now,
         * except a poller of the descriptor: tell it before it is closed. */
        st = atomic_load_explicit(cancel__word(s), memory_order_relaxed);
        if ((st & (ST_HAS_FD | ST_REQUESTED)) == ST_HAS_FD)
            cancel__eventfd_signal(atomic_load_explicit(&atomic_load_explicit(&s->extra, memory_order_acquire)->fd,
                                                        memory_order_relaxed));
        if (s->regs)
            make_inert_locked(s, false);
        cancel__destroy(s);
        return;
    }
    atomic_fetch_or_explicit(cancel__word(s), ST_FREED, memory_order_relaxed);
    if (cancel__mark(s, ST_DEAD)) {
        /* Freed uncancelled: its registrations will never run. */
        cancel__held held = cancel__source_lock(s);
        make_inert_locked(s, false);
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
    /* A cancelled source keeps its deadline (cancel_token_deadline). */
    if (atomic_load_explicit(cancel__word(s), memory_order_acquire) & ST_REQUESTED)
        return false;
    /* Disarm first: a deadline that fires does so under the timer lock, so
     * after this either it has set REQUESTED (seen below) or it never will. */
    if (atomic_load_explicit(&s->timer_slot, memory_order_relaxed))
        cancel__timer_disarm(s, false);
    cancel__held held = cancel__source_lock(s);
    bool ok = !(atomic_load_explicit(cancel__word(s), memory_order_relaxed) & ST_REQUESTED);
    if (ok)
        make_inert_locked(s, true);
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
    out->deadline_ns = CANCEL_INFINITE;
    if (!(st & ST_REQUESTED)) {
        int64_t d = cancel__timer_deadline(s);
        if (d != CANCEL_INFINITE) {
            int64_t left = d - cancel__now();
            out->deadline_ns = left < 0 ? 0 : left;
        }
    }
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
