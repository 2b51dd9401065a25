/*
 * For the tests of <cancel/sync.h>: knowing that a thread is blocked in a
 * library call, through the thread's blocked-in word (src/block/block.h),
 * which every blocking call sets just before it sleeps. A positive signal:
 * no sleep decides anything.
 */
#ifndef CANCEL_TEST_SYNC_PROBE_H
#define CANCEL_TEST_SYNC_PROBE_H

#include "../check.h"
#include "block/block.h"

#include <sched.h>
#include <string.h>

typedef struct probe {
    struct cancel__blocked *_Atomic word; /* the probed thread's */
} probe;
#define PROBE_INIT {NULL}

/* Called by the thread to be probed, before it blocks. */
static inline void probe_arm(probe *p)
{
    atomic_store(&p->word, cancel__blocked_here());
}

/* Returns once the probed thread is blocked in `what` (it may be just about
 * to enter the kernel: callers must not depend on more). */
static inline void probe_wait_blocked(probe *p, const char *what)
{
    struct cancel__blocked *b;
    while (!(b = atomic_load(&p->word)))
        sched_yield();
    for (;;) {
        const char *w = atomic_load_explicit(&b->what, memory_order_relaxed);
        if (w && strcmp(w, what) == 0)
            return;
        sched_yield();
    }
}

#endif
