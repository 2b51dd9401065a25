/*
 * <cancel/sync.h>: waiting for another thread, cancellably.
 *
 * Three ways threads hand work or news to each other, each of which also
 * returns as soon as a cancellation token is cancelled or a timeout passes:
 * a wait on the caller's own pthread condition variable, a counting
 * semaphore, and a bounded multi-producer multi-consumer queue of pointers.
 * A worker pool that must stop on shutdown:
 *
 *     cancel_queue *jobs = cancel_queue_new(1024);
 *     // producers:
 *     if (cancel_queue_push(tok, jobs, job, CANCEL_INFINITE) != 0)
 *         free_job(job);                   // not enqueued: still ours
 *     // each worker:
 *     void *job;
 *     while (cancel_queue_pop(tok, jobs, &job, CANCEL_INFINITE) == 0)
 *         run(job);
 *     // ECANCELED: shut down; EPIPE: the queue was closed and is empty
 *
 * Conventions (those of <cancel.h>): the token comes first; every call
 * returns 0 or an error number and leaves errno alone, except the
 * constructors (NULL with errno). A token that is already cancelled makes
 * every call return ECANCELED at once, before anything else is looked at
 * (arguments, a closed queue, a semaphore's count). Timeouts are in
 * nanoseconds on cancel_now()'s clock (CLOCK_MONOTONIC, or the manual clock
 * of a test, which governs every timeout here); 0 means "try once",
 * CANCEL_INFINITE waits forever, another negative timeout is EINVAL. When a
 * cancellation and success arrive together, cancellation wins: a call that
 * returns ECANCELED consumed nothing. A retained token whose source is freed
 * uncancelled during a wait simply stops mattering: the call waits for its
 * other conditions. No call makes a system call unless it must sleep or
 * wake a sleeper, and none allocates, except that on the manual clock a
 * call that finds nothing to take at once (cancel_cond_wait always) and has
 * a finite timeout other than 0 makes a child source for that timeout,
 * whether or not it then sleeps; and the first sleep in the process starts
 * the library thread (its first registration does).
 *
 * Blocking: a call that must sleep registers one callback on the token for
 * the duration of the sleep (never on its fast path) and marks the thread
 * as blocked in it. The semaphore and the queue sleep on a futex, use no
 * descriptor, and are not pthread cancellation points; signals do not
 * interrupt them (EINTR is retried, never returned). cancel_cond_wait is a
 * pthread cancellation point, as pthread_cond_wait is: a thread cancelled
 * in it leaves nothing registered and holds the mutex, for its cleanup
 * handlers. The callbacks these calls register run on whichever thread
 * cancels the token and reach no cancellation point, so a thread with a
 * pthread cancellation pending may cancel it. The library itself never uses
 * pthread_cancel.
 *
 * From a callback: cancel_sem_post and cancel_queue_close may be called from
 * a cancellation callback (they never block). The waits may be too, but a
 * callback that waits stalls its canceller.
 */
#ifndef CANCEL_SYNC_H
#define CANCEL_SYNC_H

#include <cancel.h>

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Condition variables
 * ------------------------------------------------------------------------ */

/* Waits on the caller's condition variable like pthread_cond_wait, and also
 * returns when `tok` is cancelled or `timeout_ns` passed. Call it with
 * `mutex` locked (once, if it is recursive) in the usual predicate loop:
 *
 *     pthread_mutex_lock(&mu);
 *     while (!ready && (err = cancel_cond_wait(tok, &cv, &mu, CANCEL_INFINITE)) == 0)
 *         ;
 *     pthread_mutex_unlock(&mu);
 *
 * Returns, with `mutex` locked again on every path:
 *   0          woken (by a signal or broadcast, or spuriously): recheck the predicate;
 *   ECANCELED  `tok` is cancelled (checked first, and again on waking);
 *   ETIMEDOUT  the timeout passed (a timeout of 0 returns it at once);
 *   EINVAL     a NULL cond or mutex, or a negative timeout other than
 *              CANCEL_INFINITE;
 *   ENOMEM     the manual clock is on and the call's timer could not be made;
 *   another error of pthread_cond_clockwait, passed through, ahead of
 *              ECANCELED and ETIMEDOUT (EPERM: an error-checking mutex the
 *              caller does not hold; EOWNERDEAD for a robust mutex, which
 *              is then held).
 *
 * No wake-up is lost: a broadcast or signal made by a thread that locked
 * `mutex` after the caller's predicate check reaches the caller, and so does
 * a cancellation at any moment after the call began. A cancellation wakes the
 * waiter directly: its callback broadcasts `cond` (other waiters of `cond` see
 * a spurious wake-up, which POSIX allows). The callback never locks `mutex`,
 * so cancelling from a thread that holds `mutex` cannot deadlock. If the
 * waiter is still between its check and its sleep (it holds the mutex
 * there), the callback waits for it to sleep before broadcasting, which the
 * C library lets it see. Where it cannot (a C library other than glibc, or
 * glibc with lock elision on), or where what it sees does not prove that the
 * waiter is in the condvar yet (processors other than x86, whose stores may
 * become visible out of order), the waiter also sleeps in slices of 1 ms,
 * so a cancellation in that window is noticed within 1 ms. Timeouts run on
 * CLOCK_MONOTONIC whatever clock attribute `cond` was created with. Any mutex
 * type works. Thread-safe, like pthread_cond_wait.
 */
CANCEL_API int cancel_cond_wait(cancel_token tok, pthread_cond_t *cond, pthread_mutex_t *mutex,
                                int64_t timeout_ns);

/* ------------------------------------------------------------------------
 * Semaphores
 * ------------------------------------------------------------------------ */

/* A counting semaphore: a count of units; waiting takes one, posting adds
 * one. Eight bytes of one allocation. */
typedef struct cancel_sem cancel_sem;

/* The largest count a semaphore holds (POSIX's SEM_VALUE_MAX). */
#define CANCEL_SEM_MAX INT_MAX

/* Creates a semaphore holding `initial` units. Returns NULL with errno EINVAL
 * (initial > CANCEL_SEM_MAX) or ENOMEM. Thread-safe. */
CANCEL_API cancel_sem *cancel_sem_new(unsigned initial);

/* Frees a semaphore. No thread may be waiting on it or use it afterwards.
 * A post's last access is the update that hands its unit over, so the
 * thread that took that unit may free the semaphore at once, even before
 * cancel_sem_post has returned on the posting thread (as POSIX allows of
 * sem_destroy). NULL is a no-op. */
CANCEL_API void cancel_sem_free(cancel_sem *sem);

/* Takes one unit, waiting for one if the count is 0. Returns 0 (a unit was
 * taken: what its poster did before posting is visible), ECANCELED (no unit
 * taken), ETIMEDOUT (none taken), or EINVAL (NULL sem, or a bad timeout);
 * ENOMEM on the manual clock as for cancel_cond_wait. With a unit available
 * it costs one compare-and-swap and makes no system call. Waiters are not
 * served in arrival order. Thread-safe. */
CANCEL_API int cancel_sem_wait(cancel_token tok, cancel_sem *sem, int64_t timeout_ns);

/* Adds one unit and wakes one waiter if any sleeps. Returns 0, EOVERFLOW
 * (the count is already CANCEL_SEM_MAX: nothing changed) or EINVAL (NULL).
 * No system call when nobody sleeps. Never blocks. Thread-safe; from a
 * callback too. */
CANCEL_API int cancel_sem_post(cancel_sem *sem);

/* The current count: a snapshot, stale as soon as it returns. Thread-safe. */
CANCEL_API unsigned cancel_sem_value(const cancel_sem *sem);

/* ------------------------------------------------------------------------
 * Queues
 * ------------------------------------------------------------------------ */

/* A bounded multi-producer multi-consumer queue of `void *` items (NULL is a
 * valid item). One producer and one consumer see first-in first-out order;
 * with several, each producer's items come out in the order it pushed them
 * relative to any one consumer's pops. An item is never lost or duplicated:
 * a push that returns an error did not enqueue, a pop that returns an error
 * did not dequeue. Lock-free while neither full nor empty: a push or pop
 * then costs one compare-and-swap on the position and one release store on
 * the item's slot, and makes no system call while nobody sleeps. A call
 * about to sleep first issues a process-wide memory barrier (membarrier):
 * the price of the operations' cheap fence (docs/sync.md). */
typedef struct cancel_queue cancel_queue;

/* Creates a queue holding at most `capacity` items. Returns NULL with errno
 * EINVAL (capacity 0, or too large to allocate) or ENOMEM. Thread-safe. */
CANCEL_API cancel_queue *cancel_queue_new(size_t capacity);

/* Frees a queue. Items left in it are the caller's (pop them first if they
 * own memory). No thread may be waiting on it or use it afterwards, and
 * every call on it must have returned: unlike a semaphore's post, a push
 * (or pop) still reads the queue after its item (or the room it made) is
 * visible to the other side, to learn whether someone sleeps there. So the
 * thread that pops the last item must not free the queue on the strength of
 * that item alone: it must know that the push returned (join its thread,
 * or hear of it some other way), and likewise for room made by a pop.
 * (Making the hand-over itself tell of sleepers would cost every push and
 * pop a locked instruction: docs/sync.md.) NULL is a no-op. */
CANCEL_API void cancel_queue_free(cancel_queue *q);

/* Appends `item`, waiting for room while the queue is full. Returns 0
 * (enqueued; what the caller did before is visible to the thread that pops
 * it), ECANCELED, ETIMEDOUT, EPIPE (the queue is closed, whether or not it
 * has room), or EINVAL (NULL queue, bad timeout); ENOMEM on the manual
 * clock as for cancel_cond_wait. On every error the item was not enqueued
 * and is still the caller's. Thread-safe. */
CANCEL_API int cancel_queue_push(cancel_token tok, cancel_queue *q, void *item, int64_t timeout_ns);

/* Removes the oldest item into *item, waiting while the queue is empty.
 * Returns 0 (*item set), ECANCELED, ETIMEDOUT, EPIPE (the queue is closed
 * and every item pushed before the close has been popped), or EINVAL (NULL
 * queue or item, bad timeout); ENOMEM on the manual clock as for
 * cancel_cond_wait. On every error nothing was dequeued and *item is
 * unchanged. Thread-safe. */
CANCEL_API int cancel_queue_pop(cancel_token tok, cancel_queue *q, void **item, int64_t timeout_ns);

/* Closes the queue: every push from now on returns EPIPE; pops drain the
 * items already in it, then return EPIPE. Wakes every waiter. A push that
 * returned 0 before the close is in the queue; one that races the close
 * either enqueued (returned 0) or did not (EPIPE). Idempotent; NULL is a
 * no-op. Never blocks. Thread-safe; from a callback too (closing a queue is
 * a natural cancellation callback). */
CANCEL_API void cancel_queue_close(cancel_queue *q);

/* The number of items in the queue (those being pushed count): a snapshot,
 * stale as soon as it returns, between 0 and the capacity. 0 for NULL.
 * Thread-safe. */
CANCEL_API size_t cancel_queue_len(const cancel_queue *q);

/* The capacity given to cancel_queue_new (0 for NULL). Thread-safe. */
CANCEL_API size_t cancel_queue_capacity(const cancel_queue *q);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_SYNC_H */
