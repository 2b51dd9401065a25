/*
 * Parking and waking threads: the bottom of the task layer.
 *
 * Every thread has one parker word (thread-local). A thread that waits
 * resets its word to 0 (an exchange with acquire order), checks its
 * conditions, and sleeps on the word with a futex while it is still 0; a
 * waker first makes the condition true, then stores 1 (release) and wakes
 * the futex. If the waker's store comes before the waiter's reset, the
 * reset's acquire sees the condition; if after, the futex sees 1 and does
 * not sleep. So a thread listed in several places at once (a task's wait
 * list and its pool's idle list) sleeps on one word for all of them.
 *
 * Wait lists belong to the object waited for (a task, a group) and are
 * protected by one of a fixed table of mutexes chosen by the object's
 * address, so that tasks carry no mutex of their own. Locking: a stripe
 * mutex is held only for a few pointer writes and futex wakes, never while
 * user code runs, and never together with another stripe; the only lock
 * taken under it is none.
 *
 * Lifetime: a waiter's node lives on its stack and leaves the list (under
 * the stripe) before the waiter returns; a waker touches nodes only under
 * the stripe. The parker word is thread-local, so it outlives any wait.
 *
 * Two ways to wake a list. What happens once (a task's end) empties it:
 * its waiters never need to be woken again. What can happen again (a
 * group's count of running tasks meets zero, then a spawn raises it, then
 * it meets zero again) leaves every waiter listed, since a waiter woken by
 * the first zero may find the group busy again and sleep on; each waiter
 * removes itself when it leaves.
 */
#include "task_internal.h"

#include <limits.h>

#define STRIPES 64

static pthread_mutex_t stripes[STRIPES] = {
#define M4 PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, \
           PTHREAD_MUTEX_INITIALIZER
#define M16 M4, M4, M4, M4
    M16, M16, M16, M16
#undef M16
#undef M4
};

pthread_mutex_t *cancel__stripe(const void *obj)
{
    uintptr_t h = (uintptr_t)obj;
    h ^= h >> 17;
    h *= UINT64_C(0x9E3779B97F4A7C15);
    return &stripes[(h >> 58) & (STRIPES - 1)];
}

static _Thread_local _Atomic uint32_t parker;

_Atomic uint32_t *cancel__parker(void)
{
    return &parker;
}

void cancel__parker_wake(_Atomic uint32_t *word)
{
    /* release: pairs with the waiter's acquire exchange; what the waker did
     * to make the condition true is visible once the waiter sees 1. */
    atomic_store_explicit(word, 1, memory_order_release);
    cancel__futex_wake(word, 1);
}

void cancel__parker_wake_cb(void *word)
{
    cancel__parker_wake(word);
}

void cancel__parker_sleep(_Atomic uint32_t *word, int64_t abs_deadline_ns)
{
    (void)cancel__futex_wait(word, 0, abs_deadline_ns); /* every return is a reason to look again */
}

void cancel__waiters_add(struct cancel__waiter **head, struct cancel__waiter *w)
{
    w->next = *head;
    if (w->next)
        w->next->pprev = &w->next;
    w->pprev = head;
    *head = w;
}

void cancel__waiters_remove(struct cancel__waiter *w)
{
    if (!w->pprev)
        return;
    *w->pprev = w->next;
    if (w->next)
        w->next->pprev = w->pprev;
    w->pprev = NULL;
    w->next = NULL;
}

void cancel__waiters_wake_listed(struct cancel__waiter *head)
{
    for (struct cancel__waiter *w = head; w; w = w->next)
        cancel__parker_wake(w->word);
}

void cancel__waiters_wake_all(struct cancel__waiter **head)
{
    struct cancel__waiter *w = *head;
    *head = NULL;
    while (w) {
        struct cancel__waiter *next = w->next;
        _Atomic uint32_t *word = w->word;
        w->pprev = NULL; /* unlisted: the waiter will not touch the list again */
        w->next = NULL;
        cancel__parker_wake(word);
        w = next;
    }
}
