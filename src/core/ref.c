/*
 * A source's memory.
 *
 * A plain source is one allocation of 56 bytes (a 64-byte malloc chunk).
 * `refs` counts the owner's handle (until cancel_source_free), retained
 * tokens, threads blocked in cancel_token_wait, a dispatch in progress or
 * queued, a deadline firing, and linked children that took this source as
 * their cause's origin. Children's links point here without a reference:
 * once the first child links (REFS_CHILDREN), the final release is decided
 * under the source lock together with `children` (link.c).
 */
#include "ref.h"

#include "lock.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(struct cancel_source) <= 56, "a source fits a 64-byte malloc chunk");

const char cancel__message_lost[] = "(message lost: out of memory)";

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

struct cancel_source *cancel__source_create(void)
{
    struct cancel_source *s = malloc(sizeof *s);
    if (!s) {
        errno = ENOMEM;
        return NULL;
    }
    cancel__source_init(s, 0);
    return s;
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
            free(ex->origin);
            free(ex->deadline_origin);
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
    n->origin = NULL;
    n->deadline_origin = NULL;
    atomic_init(&n->fd, -1);
    if (atomic_compare_exchange_strong_explicit(&s->extra, &ex, n, memory_order_acq_rel,
                                                memory_order_acquire))
        return n;
    free(n);
    return ex;
}
