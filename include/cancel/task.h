/*
 * <cancel/task.h>: a thread pool whose tasks each get a token, groups of
 * tasks that end together (structured concurrency), and reports of what
 * every task did with a cancellation request.
 *
 * A *pool* owns a few threads. cancel_task_run queues fn(arg, t) on it,
 * where t is cancelled when the caller's token is or when the pool is
 * freed, with their cause: cancelling the caller's source, or freeing the
 * pool, cancels the task. A task that is cancelled before it starts never
 * runs. A *group* (Go's errgroup, Trio's nursery) gathers tasks under one
 * token: the first task that fails cancels its siblings with that failure
 * as the cause, and cancel_group_wait returns only when every task of the
 * group has returned. A group created inside a task, under the task's
 * token, is that task's child: cancelling the outer group reaches it, and
 * reports show it under the task.
 *
 *     cancel_pool *pool = cancel_pool_new(0, "workers");   // one thread per CPU
 *     cancel_group *g = cancel_group_new(pool, CANCEL_TOKEN_NONE, "fetch");
 *     for (int i = 0; i < n; i++)
 *         cancel_group_spawn(g, fetch_one, &jobs[i], jobs[i].url);
 *     int err = cancel_group_wait(g);      // 0, the first failure, or ECANCELED
 *     cancel_group_report(g, stderr, CANCEL_REPORT_TEXT);
 *     cancel_group_free(g);
 *     cancel_pool_free(pool);
 *
 * where a task looks like
 *
 *     static int fetch_one(void *arg, cancel_token tok)
 *     {
 *         ...   cancel_io_read(tok, fd, buf, len) ...   // returns ECANCELED when asked to stop
 *         return cancel_token_check(tok);               // 0, or ECANCELED: "stopped on request"
 *     }
 *
 * Reports answer the question cancellation systems leave open: who got the
 * request, how fast each task answered it (response latency), which ones
 * ignored it (stragglers), whether they burnt CPU meanwhile, and what they
 * were blocked in. docs/observability.md describes them and their JSON.
 *
 * Conventions are those of <cancel.h>: int functions return 0 or an error
 * number, constructors NULL with errno; timeouts are in nanoseconds on
 * cancel_now()'s clock (the manual clock governs them), CANCEL_INFINITE
 * waits forever, 0 polls, another negative value is EINVAL. Every function
 * is thread-safe. Names are copied; NULL means unnamed.
 *
 * Waiting from inside a task does not starve the pool: a pool thread that
 * waits (cancel_task_wait, cancel_group_wait) runs queued tasks of its own
 * pool meanwhile, so even a one-thread pool can run a task that spawns
 * another and waits for it. Such a wait may therefore return later than the
 * event it waited for, by the time the task it ran takes. The limit: a task
 * run that way runs on the waiting task's thread and stack, in the middle of
 * its wait. If it needs something the waiting task does only after its wait
 * returns, or a lock the waiting task holds while it waits, it never gets it
 * and the thread deadlocks (with itself). So a task should not wait while it
 * holds a lock that other tasks of its pool take, nor wait for a task that
 * needs what it does after the wait.
 *
 * Pool threads start with every signal blocked: signal handlers run on the
 * application's own threads. A task may call any blocking call of
 * <cancel/io.h>, <cancel/sync.h> or <cancel/process.h> with its token.
 * Pools do not cross fork(): their threads are not in the child, where the
 * parent's pools, tasks and groups must not be used or freed (make new
 * ones there).
 *
 * Memory order: everything a task did happens before the return of a wait
 * that sees it ended (cancel_task_wait, cancel_group_wait,
 * cancel_task_state_of or cancel_task_result reporting it ended), and before
 * cancel_pool_free returns.
 */
#ifndef CANCEL_TASK_H
#define CANCEL_TASK_H

#include <cancel.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A task's body. Returns 0 (completed) or an error number (failed), the
 * task's result. ECANCELED returned while tok is cancelled means "stopped on
 * request": the task ends CANCELED, not FAILED. tok is valid until fn
 * returns; retain it (cancel_token_retain) to keep it longer. */
typedef int cancel_task_fn(void *arg, cancel_token tok);

/* ------------------------------------------------------------------------
 * Pools
 * ------------------------------------------------------------------------ */

typedef struct cancel_pool cancel_pool;

/* Starts a pool of `threads` threads (0: one per online CPU), named `name`
 * (copied; NULL: unnamed): the name is the origin of the cause when freeing
 * the pool cancels its tasks, and names the threads (cancel-<name>, cut to
 * the system's limit). Returns NULL with errno EINVAL (threads above
 * 65536), ENOMEM, or the error of pthread_create (EAGAIN...) when not all
 * threads could be started; then nothing is left behind. */
CANCEL_API cancel_pool *cancel_pool_new(size_t threads, const char *name);

/* Cancels every task of the pool, queued or running, grouped or not (reason
 * REQUESTED, origin the pool's name); queued tasks end CANCELED without
 * running; waits for the running ones to return (it waits as long as they
 * take: a task that ignores its token delays this, and a report names it as
 * a straggler meanwhile); joins the threads. Nothing of the pool runs after
 * it returns. Task and group handles stay valid: groups must still be
 * waited (their tasks have all ended) and freed by their owners. While it
 * runs, cancel_task_run, cancel_group_spawn and cancel_group_new on this
 * pool return ESHUTDOWN. NULL is a no-op. Not to be called twice, nor from
 * one of the pool's own tasks (it would wait for itself), nor from a
 * cancellation callback run by a cancel that one of its tasks waits for. */
CANCEL_API void cancel_pool_free(cancel_pool *pool);

/* The number of threads of the pool (0 for NULL). */
CANCEL_API size_t cancel_pool_threads(const cancel_pool *pool);

/* ------------------------------------------------------------------------
 * Tasks
 * ------------------------------------------------------------------------ */

typedef struct cancel_task cancel_task;

typedef enum cancel_task_state {
    CANCEL_TASK_PENDING,   /* queued */
    CANCEL_TASK_RUNNING,   /* fn is running */
    CANCEL_TASK_COMPLETED, /* fn returned 0 */
    CANCEL_TASK_CANCELED,  /* never ran (cancelled first), or returned ECANCELED on request */
    CANCEL_TASK_FAILED     /* fn returned another error (or ECANCELED unasked) */
} cancel_task_state;

/* Queues fn(arg, t) on the pool. t is cancelled when `tok` is or when the
 * pool is freed, and its cause (reason, code, message, origin) is theirs:
 * with a token, t is the token of a source of the task's own, a linked
 * child of tok and of the pool; with CANCEL_TOKEN_NONE, t is the pool's own
 * token, shared by every such task (a task cannot cancel its token, so a
 * source of its own would add nothing but its cost). `name` names the task;
 * only reports show names, and they cover groups, so a plain task's name is
 * not kept. If `out` is not NULL it receives a handle to wait on, which the
 * caller frees with cancel_task_free; with NULL the task cleans up after
 * itself.
 *
 * A task whose token is cancelled before a thread starts it never runs: it
 * ends CANCELED (result ECANCELED) at once, even while every pool thread is
 * busy, and its waiters wake then. Calling this with a cancelled `tok`
 * therefore returns 0 and the task is already CANCELED.
 *
 * Returns 0; EINVAL (NULL pool or fn); ENOMEM; ESHUTDOWN (the pool is being
 * freed). On error *out is set to NULL and fn never runs. Thread-safe; may
 * be called from a task (of any pool) and from a cancellation callback. */
CANCEL_API int cancel_task_run(cancel_pool *pool, cancel_token tok, cancel_task_fn *fn, void *arg,
                               const char *name, cancel_task **out);

/* The task's state now (PENDING for NULL). Once it reports an ended state
 * (COMPLETED, CANCELED, FAILED), everything the task did is visible to the
 * caller. Thread-safe; one atomic load. */
CANCEL_API cancel_task_state cancel_task_state_of(const cancel_task *task);

/* Waits until the task ended. Returns 0 once it ended (at once if it
 * already has: an ended task wins over a cancelled wait_tok and a zero
 * timeout); ETIMEDOUT after timeout_ns (0: poll); ECANCELED if wait_tok (the
 * waiter's own token) is cancelled first: the task is not cancelled by it
 * and runs on; EINVAL (NULL task, a negative timeout other than
 * CANCEL_INFINITE); ENOMEM (manual clock only: its timer could not be made).
 * A cancelled wait_tok is looked at before the arguments, as in
 * <cancel/sync.h>: it returns 0 if the task has ended, else ECANCELED (also
 * for a NULL task or a bad timeout).
 * Called from a pool thread, it runs queued tasks of that pool while it
 * waits (see the top of this header). Records "cancel_task_wait" as what
 * the thread is blocked in. Any number of threads may wait for one task;
 * not concurrently with cancel_task_free of the same handle. From a
 * callback: only with a zero timeout. */
CANCEL_API int cancel_task_wait(cancel_token wait_tok, cancel_task *task, int64_t timeout_ns);

/* fn's return value once the task ended; ECANCELED if it never ran;
 * EINPROGRESS while it has not ended; EINVAL for NULL. Thread-safe. */
CANCEL_API int cancel_task_result(const cancel_task *task);

/* Drops the handle. The task itself runs on and cleans up after itself.
 * NULL is a no-op. Not to be called twice, nor during a wait on it. */
CANCEL_API void cancel_task_free(cancel_task *task);

/* ------------------------------------------------------------------------
 * Groups: structured concurrency. Nothing spawned in a group outlives
 * cancel_group_wait.
 * ------------------------------------------------------------------------ */

typedef struct cancel_group cancel_group;

/* Creates a group whose tasks run on `pool`. Its token is a linked child of
 * `parent` (CANCEL_TOKEN_NONE: none) and of the pool, named `name` (copied;
 * NULL: unnamed). Created from a task, with that task's token as parent, the
 * group is the task's child in reports. Returns NULL with errno EINVAL
 * (NULL pool), ENOMEM, or ESHUTDOWN (the pool is being freed). Thread-safe. */
CANCEL_API cancel_group *cancel_group_new(cancel_pool *pool, cancel_token parent, const char *name);

/* The group's token, cancelled by its parent, by cancel_group_cancel, by the
 * first failing task, or when the pool is freed. Valid until
 * cancel_group_free (CANCEL_TOKEN_NONE for NULL). */
CANCEL_API cancel_token cancel_group_token(const cancel_group *g);

/* Queues fn(arg, t) on the group's pool; t is the group's token (shared by
 * its tasks, as above); `name` (copied; NULL: unnamed) names the task in
 * reports and in the cause of its failure. Allowed until cancel_group_wait
 * has returned, from any thread, including the group's own tasks while the
 * group is being waited (they may spawn siblings, as in errgroup). Into a
 * cancelled group the task is accepted and ends CANCELED without running.
 * The group keeps a record of every task (about 200 bytes) until it is
 * freed. Returns 0; EINVAL (NULL g or fn); ENOMEM; ESHUTDOWN
 * (cancel_group_wait has returned, the group is being freed, or its pool is
 * being or was freed). Thread-safe; may be called from a cancellation
 * callback. */
CANCEL_API int cancel_group_spawn(cancel_group *g, cancel_task_fn *fn, void *arg, const char *name);

/* Cancels the group (reason REQUESTED, origin the group's name). Returns
 * true if this call cancelled it; false if it was already cancelled (by
 * this call before, its parent, a failure, or the pool) or for NULL (errno
 * EINVAL). Runs the cancellation callbacks of the group's tasks on the
 * calling thread, as cancel_source_cancel does. Thread-safe. */
CANCEL_API bool cancel_group_cancel(cancel_group *g);

/* Waits until every task of the group has ended, then closes the group to
 * new spawns. Does not cancel the group. Returns 0 if every task completed
 * (also for an empty group, and for a cancelled group whose tasks all
 * returned 0); else the error of the first task that failed (first in
 * time); else ECANCELED (some task ended CANCELED); EINVAL for NULL. A later
 * call returns the same at once. Called from a pool thread, it runs queued
 * tasks of that pool meanwhile. Records "cancel_group_wait" as what the
 * thread is blocked in. Thread-safe. Not from a callback. */
CANCEL_API int cancel_group_wait(cancel_group *g);

/* Frees the group. If it was not waited yet: cancels it, then waits for its
 * tasks as cancel_group_wait does. A cancel_group_spawn still in progress on
 * another thread (its task may have ended, and the wait returned, before
 * the spawn call itself returns) is waited for too: a spawn holds the group
 * until it returns. Groups nested in it that are still alive
 * become top-level groups in reports. NULL is a no-op. Not to be called
 * twice, nor concurrently with other calls on g (its own tasks may still
 * call cancel_group_spawn: ESHUTDOWN). Not from a callback. */
CANCEL_API void cancel_group_free(cancel_group *g);

/* ------------------------------------------------------------------------
 * Observability
 * ------------------------------------------------------------------------ */

/* A task still running `grace_ns` after its token was cancelled is a
 * straggler. Default 100 ms; a negative value means "never". No-op for
 * NULL. Thread-safe. */
CANCEL_API void cancel_group_set_grace(cancel_group *g, int64_t grace_ns);

typedef struct cancel_group_stats {
    size_t pending, running, completed, canceled, failed; /* the group's own tasks, by state */
    size_t stragglers;                                    /* running now, past the grace */
} cancel_group_stats;

/* Counts the group's own tasks (not those of nested groups) by state, now.
 * Returns 0 or EINVAL (NULL g or out). Walks the group's tasks: a
 * snapshot, not a hot path. Thread-safe. */
CANCEL_API int cancel_group_stats_get(const cancel_group *g, cancel_group_stats *out);

#define CANCEL_REPORT_TEXT 0u /* an aligned tree for people */
#define CANCEL_REPORT_JSON 1u /* one JSON document (docs/observability.md) */

/* Writes a report of the group, its tasks and the groups nested in them
 * that are alive now: states, results, causes with their origin, queued,
 * started and ended times, response latency (from the moment a task's token
 * was cancelled to the moment it returned), CPU time the task used after
 * the request, what each running task is blocked in, and stragglers (with
 * how long they ignored the request and what they were doing). Returns 0;
 * EINVAL (NULL g or out, unknown format); ENOMEM; EIO (writing to `out`
 * failed). The report is built in memory, then written with one fwrite.
 * Thread-safe; a snapshot taken while tasks run. */
CANCEL_API int cancel_group_report(const cancel_group *g, FILE *out, unsigned format);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_TASK_H */
