/*
 * The core's data: a source, a registration, and the bits of the state word.
 * Types and inline helpers only; each file's functions are declared in its
 * own header (state.h, ref.h, timer.h...). docs/design.md has the file map.
 *
 * Locking and lifetime (the full argument, with a table of every atomic, is
 * in docs/design.md):
 *
 *  - A source's state word (head.cancel__word) changes only by atomic
 *    read-modify-write. REQUESTED and DEAD are each set at most once and never
 *    together: whichever CAS comes first decides whether the source was
 *    cancelled or freed uncancelled. Whoever sets one of them reads, in the
 *    same RMW, whether a waiter sleeps on the word (WAITERS) or a descriptor
 *    exists (HAS_FD), and wakes it. Waiters and descriptor creators set their
 *    bit by RMW on the same word, so exactly one side sees the other: no wake
 *    can be lost and no extra fence is needed.
 *
 *  - A source's `lock` protects its registration list, `running`, `code`,
 *    `children`, the failure message and the linked origin. It is never held
 *    while user code runs, and never taken in a signal handler. At most one
 *    source lock is held at a time. The timer lock is taken alone or inside
 *    nothing; a source lock is never held while taking it.
 *
 *  - Cancelling sets REQUESTED (lock-free, so that cancel_async is AS-safe)
 *    and then *always* leads to a dispatch that takes the lock and empties
 *    the list. Registration checks the state under the lock, so a
 *    registration either lands in the list before that dispatch empties it or
 *    sees REQUESTED and runs inline. Writers of cause data (fail's message
 *    and code, a parent's origin) take the lock, write, then CAS REQUESTED;
 *    readers load the state with acquire and only read cause data that the
 *    winning CAS published.
 *
 *  - Memory: `refs` counts the owner's handle (until cancel_source_free),
 *    retained tokens, threads blocked in cancel_token_wait, a dispatch in
 *    progress or queued, a timer firing, and linked children that took this
 *    source as their cause's origin. The last release destroys.
 */
#ifndef CANCEL_CORE_SOURCE_H
#define CANCEL_CORE_SOURCE_H

#include "cancel.h"
#include "platform/platform.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bits of the state word. */
enum {
    ST_REQUESTED = 1u << 0,    /* cancellation requested; never cleared */
    ST_DEAD = 1u << 1,         /* freed uncancelled: can never be cancelled */
    ST_WAITERS = 1u << 2,      /* some thread sleeps on the word (futex) */
    ST_HAS_FD = 1u << 3,       /* extra->fd is valid */
    ST_LINKED = 1u << 4,       /* immutable: the source is a struct cancel__linked */
    ST_LINKED_CAUSE = 1u << 5, /* the cause lives in the linked origin */
    ST_UNREG_WAITERS = 1u << 6, /* a thread in cancel_unregister waits for a running
                                   callback (set and cleared under the lock) */
    ST_FREED = 1u << 7,        /* cancel_source_free was called while other
                                  references kept the memory */
    ST_INTRUDER = 1u << 11,    /* a thread holds the lock as an intruder into a
                                  dispatch (lock.h) */
    ST_MESSAGE_LOST = 1u << 12, /* FAILED, but the message could not be copied */
    ST_TICK = 1u << 24,        /* a count in bits 24-31, bumped to wake timed waiters
                                  when the manual clock moves (clock.c); means
                                  nothing else. A count, not a bit: two bumps must
                                  not give the word back its old value. */
    ST_REASON_SHIFT = 8,       /* 3 bits of cancel_reason */
    ST_REASON_MASK = 7u << 8,
    ST_SIGNO_SHIFT = 16, /* 8 bits: signal number for CANCEL_REASON_SIGNAL */
    ST_SIGNO_MASK = 0xffu << 16,
};

static inline cancel_reason cancel__reason_of(uint32_t st)
{
    return (cancel_reason)((st & ST_REASON_MASK) >> ST_REASON_SHIFT);
}
static inline uint32_t cancel__reason_bits(cancel_reason r, int signo)
{
    return ((uint32_t)r << ST_REASON_SHIFT) | (((uint32_t)signo & 0xffu) << ST_SIGNO_SHIFT);
}

/* refs: set (under the lock, never cleared) once a child links to the source.
 * From then on the final release is decided under the lock, together with
 * `children`, because children's links point at the source without holding
 * a reference: the memory goes when both counts are zero. */
#define REFS_CHILDREN (UINT32_C(1) << 31)
#define REFS_COUNT (REFS_CHILDREN - 1)

/* The private layout behind cancel_registration (same size, checked). */
struct cancel__reg {
    struct cancel__reg *next;    /* under src->lock */
    struct cancel__reg **pprev;  /* under src->lock; NULL when not in a list */
    cancel_fn *fn;               /* immutable while registered */
    void *arg;                   /* immutable while registered */
    _Atomic(struct cancel_source *) src; /* where it is, written under the source's lock:
                                            the source (listed), the source tagged
                                            cancel__popped (its callback was started;
                                            the storage may belong to someone else
                                            now), or NULL (inert) */
    uintptr_t tag; /* CANCEL_DEBUG: where it is (cancel__tag), for misuse checks */
};
_Static_assert(sizeof(struct cancel__reg) == sizeof(cancel_registration), "registration size");

/* A registration's src once a dispatcher popped it (sources are at least
 * 16-byte aligned, so bit 0 is free). */
static inline struct cancel_source *cancel__popped(struct cancel_source *s)
{
    return (struct cancel_source *)((uintptr_t)s | 1);
}
static inline struct cancel_source *cancel__untag(struct cancel_source *s)
{
    return (struct cancel_source *)((uintptr_t)s & ~(uintptr_t)1);
}

/* The callback a dispatcher is running, on the dispatcher's stack. */
struct cancel__frame {
    struct cancel__reg *reg; /* under the source's lock */
    const void *thread;      /* immutable: cancel__self() of the dispatcher */
};

/* Rarely used per-source state, allocated on first need. */
struct cancel__extra {
    _Atomic(char *) name; /* set once (CAS) */
    char *message;        /* under the source lock; read after acquiring FAILED */
    char *origin;         /* a cause's origin received from another process (the
                             source's name stays its own); under the source lock,
                             read after acquiring REQUESTED */
    char *deadline_origin; /* a source received from another process: the name of
                             the exporter's source whose deadline it was armed with,
                             reported as the origin when that deadline fires here;
                             set before the source is returned, then read-only */
    _Atomic int fd;       /* -1 until created (CAS) */
};
/* The message of a failure whose message could not be copied (no memory). */
extern CANCEL_HIDDEN const char cancel__message_lost[];

struct cancel_source {
    struct cancel__state head;      /* state word; futex for cancel_token_wait */
    _Atomic uint32_t refs;          /* count in bits 0-30; REFS_CHILDREN: see below */
    _Atomic uint32_t lock;          /* cancel__lock */
    _Atomic uint32_t timer_slot;    /* where the deadline is filed (timer.c), 0 = unarmed; timer lock */
    int32_t code;                   /* FAILED code; under lock, published by the CAS */
    uint32_t children;              /* links of children that still point here (in
                                       the list, or fired but not yet unhooked); under lock */
    struct cancel__reg *regs;       /* newest first; under lock */
    struct cancel__frame *running;  /* callback being run; under lock */
    _Atomic(struct cancel__extra *) extra; /* NULL until needed; set once (CAS) */
    struct cancel_source *next_pending;    /* async queue / dispatch stack; owned by
                                              the thread that won REQUESTED */
};

/* A source with parents. */
struct cancel__linked {
    struct cancel_source src;
    struct cancel_source *origin; /* retained; under src.lock, published by
                                     the CAS that sets ST_LINKED_CAUSE */
    size_t nlinks;
    struct cancel__reg links[];   /* one registration on each parent */
};

static inline struct cancel_source *cancel__source_of(cancel_token tok)
{
    return (struct cancel_source *)(void *)tok.cancel__impl;
}
static inline _Atomic uint32_t *cancel__word(struct cancel_source *s)
{
    return &s->head.cancel__word;
}

/* Under s->lock: the registration list, newest first. */
static inline void cancel__list_push(struct cancel_source *s, struct cancel__reg *r)
{
    r->next = s->regs;
    r->pprev = &s->regs;
    if (s->regs)
        s->regs->pprev = &r->next;
    s->regs = r;
}
static inline void cancel__list_remove(struct cancel__reg *r)
{
    *r->pprev = r->next;
    if (r->next)
        r->next->pprev = r->pprev;
    r->next = NULL;
    r->pprev = NULL;
}

/* Misuse detection. In CANCEL_DEBUG builds, misuse that can be detected is
 * reported on stderr and aborts (debug.c); release builds do what the header
 * documents for it. */
#ifndef CANCEL_DEBUG
#define CANCEL_DEBUG 0
#endif
CANCEL_HIDDEN _Noreturn void cancel__misuse(const char *function, const char *problem, const void *object);
/* A broken kernel contract: reported on stderr, then abort(). */
CANCEL_HIDDEN _Noreturn void cancel__fatal(const char *problem);
/* Registration tags (CANCEL_DEBUG): the address mixed with where it is. */
enum { TAG_LISTED = 0x4c15, TAG_POPPED = 0x9099 };
static inline uintptr_t cancel__tag(const struct cancel__reg *r, uintptr_t where)
{
    return ((uintptr_t)r * 0x9E3779B97F4A7C15u) ^ where;
}
static inline void cancel__set_tag(struct cancel__reg *r, uintptr_t where)
{
    if (CANCEL_DEBUG)
        r->tag = where ? cancel__tag(r, where) : 0;
}
/* False (after reporting in CANCEL_DEBUG builds) if the owner already freed s:
 * possible without a crash only while a retained token keeps the memory. */
static inline bool cancel__source_usable(struct cancel_source *s, const char *function)
{
    if (cancel__unlikely(atomic_load_explicit(&s->head.cancel__word, memory_order_relaxed) & ST_FREED)) {
        if (CANCEL_DEBUG)
            cancel__misuse(function, "called on a source after cancel_source_free", s);
        return false;
    }
    return true;
}

#endif /* CANCEL_CORE_SOURCE_H */
