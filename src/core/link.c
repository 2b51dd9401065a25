/*
 * Linked sources: a child hooks one registration (a "link") onto each
 * parent, inside its own allocation. The dispatcher recognises links and
 * cancels the child without recursion (dispatch.c).
 *
 * Lifetime without a reference per link: a parent counts, under its lock,
 * the links that point at it (`children`); its memory is released only when
 * both that count and its reference count are zero (source.c). A child
 * unhooking (cancel__unhook, from cancel_source_free) therefore always finds
 * its parents' memory, whatever their owners did meanwhile. A parent's
 * dispatcher takes a reference on the child before it lets go of the
 * parent's lock, and the child's unhook needs that lock, so the child's
 * memory is there for the dispatcher too. (Cancelling a child through its
 * parent is the dispatcher's: dispatch.c.)
 *
 * The cause: a child cancelled through a link records the origin, the source
 * where the cancellation started (retained), and copies its reason; the code,
 * message and name are read from the origin (cancel_token_cause).
 */
#include "link.h"

#include "dispatch.h"
#include "lock.h"
#include "ref.h"
#include "state.h"
#include "worker.h"

#include <stdlib.h>
#include <string.h>

static bool usable_parent(struct cancel_source *p, const cancel_token *parents, size_t upto)
{
    if (!p)
        return false;
    if (atomic_load_explicit(cancel__word(p), memory_order_relaxed) & ST_DEAD)
        return false;
    for (size_t j = 0; j < upto; j++)
        if (cancel__source_of(parents[j]) == p)
            return false; /* duplicate */
    return true;
}

/* Hooks link r onto parent p. Returns false if p is already cancelled. */
static bool hook(struct cancel_source *p, struct cancel__reg *r)
{
    cancel__held held = cancel__source_lock(p);
    /* seq_cst: see the registration path (registration.c). */
    uint32_t st = atomic_load_explicit(cancel__word(p), memory_order_seq_cst);
    if (st & ST_REQUESTED) {
        cancel__source_unlock(p, held);
        return false;
    }
    if (!(st & ST_DEAD)) {
        cancel__list_push(p, r);
        atomic_store_explicit(&r->src, p, memory_order_relaxed);
        p->children++;
        if (!(atomic_load_explicit(&p->refs, memory_order_relaxed) & REFS_CHILDREN))
            atomic_fetch_or_explicit(&p->refs, REFS_CHILDREN, memory_order_relaxed);
    }
    cancel__source_unlock(p, held);
    return true;
}

cancel_source *cancel_source_new_linked(const cancel_token *parents, size_t count)
{
    if (!parents && count) {
        errno = EINVAL;
        return NULL;
    }
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        if (usable_parent(cancel__source_of(parents[i]), parents, i))
            n++;
    if (n == 0)
        return cancel__source_create();
    if (n > (SIZE_MAX - sizeof(struct cancel__linked)) / sizeof(struct cancel__reg)) {
        errno = ENOMEM;
        return NULL;
    }
    struct cancel__linked *l = malloc(sizeof *l + n * sizeof(struct cancel__reg));
    if (!l) {
        errno = ENOMEM;
        return NULL;
    }
    struct cancel_source *c = &l->src;
    cancel__source_init(c, ST_LINKED);
    l->origin = NULL;
    l->nlinks = n;
    for (size_t k = 0; k < n; k++) {
        struct cancel__reg *r = &l->links[k];
        r->next = NULL;
        r->pprev = NULL;
        r->fn = cancel__link_fire;
        r->arg = l;
        r->tag = 0;
        atomic_init(&r->src, NULL);
    }
    /* A parent cancelled asynchronously hands our cancellation to the
     * library thread, so it must be wanted, as for any registration. */
    if (cancel__unlikely(!cancel__worker_running()))
        (void)cancel__worker_ensure();

    size_t k = 0;
    for (size_t i = 0; i < count; i++) {
        struct cancel_source *p = cancel__source_of(parents[i]);
        if (!usable_parent(p, parents, i))
            continue;
        if (!hook(p, &l->links[k++])) {
            /* Born cancelled. The child has no callback yet; the links
             * hooked so far stay until cancel_source_free. */
            cancel__cancel_from_parent(l, p);
            break;
        }
    }
    return c;
}

void cancel__unhook(struct cancel__linked *l)
{
    for (size_t k = 0; k < l->nlinks; k++) {
        struct cancel__reg *r = &l->links[k];
        /* Only this function clears a link's src, so it is stable here. */
        struct cancel_source *p = atomic_load_explicit(&r->src, memory_order_relaxed);
        if (!p)
            continue;
        cancel__held held = cancel__source_lock(p);
        if (r->pprev)
            cancel__list_remove(r);
        atomic_store_explicit(&r->src, NULL, memory_order_relaxed);
        bool last = --p->children == 0 &&
                    (atomic_load_explicit(&p->refs, memory_order_acquire) & REFS_COUNT) == 0;
        cancel__source_unlock(p, held);
        if (last)
            cancel__destroy(p);
    }
}
