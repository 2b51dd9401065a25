/*
 * libcancel: cooperative cancellation for C.
 *
 * An owner creates a cancellation *source* and hands its *token* to every
 * operation it starts. Operations pass the token on. Only the owner can
 * request cancellation; a token only listens. Each listener notices the
 * request the way that fits it (a check in a loop, a blocking wait, a
 * callback, a pollable descriptor), stops promptly, and can tell why it was
 * cancelled (cancel_token_cause).
 *
 *     cancel_source *src = cancel_source_new();
 *     cancel_token tok = cancel_source_token(src);
 *     start_workers(tok);                 // each loops: while (!cancel_token_is_requested(tok)) ...
 *     cancel_source_cancel(src);          // every worker notices and stops
 *     join_workers();
 *     cancel_source_free(src);
 *
 * Conventions used by every function below.
 *
 *  Errors: one rule, by return type.
 *   - bool: the answer to a question (is it cancelled?) or the outcome of a
 *     race (did this call cancel it? did unregister come first?). false is a
 *     normal answer and leaves errno alone. Two documented exceptions set
 *     errno beside false, so that they are never silent: an invalid argument
 *     (a NULL source, a negative timeout: EINVAL), and cancel_unregister
 *     refusing to wait because waiting would deadlock (EDEADLK).
 *   - int: 0 on success or an error number (EINVAL, ENOMEM, ECANCELED...),
 *     never -1; errno is left alone.
 *   - pointer: NULL with errno set (EINVAL, ENOMEM).
 *   - ssize_t or a descriptor (the headers under <cancel/>): as POSIX, -1
 *     with errno set.
 *  Thread-safety: "thread-safe" means the function may be called
 *   concurrently with any other function of the library on the same
 *   objects, except where a lifetime rule below forbids it. "AS-safe" means
 *   it may be called from a signal handler. "From a callback" says whether a
 *   cancellation callback may call it; unless a comment says otherwise,
 *   every function may be.
 *  Time: every timeout and deadline is in nanoseconds on cancel_now()'s
 *   clock (CLOCK_MONOTONIC, or the manual clock of a test).
 *   CANCEL_INFINITE means "never"; another negative timeout is EINVAL.
 *  The library thread: one thread per process, started by the first
 *   registration, linked source or deadline, runs the callbacks of
 *   asynchronous cancels, signals and deadlines, one after another: keep
 *   those callbacks short. cancel_quiesce stops it.
 *
 * Lifetime rules:
 *  - A token returned by cancel_source_token() is *borrowed*: it is valid
 *    while its source lives (until cancel_source_free). A holder that may
 *    outlive the source takes its own reference with cancel_token_retain()
 *    and drops it with cancel_token_release().
 *  - cancel_source_free() must not run concurrently with calls that use a
 *    borrowed token of the same source (that would be a use after free).
 *    Calls made through a retained token are always safe.
 *  - A registration's storage belongs to the caller. While registered it must
 *    not be moved, reused or freed; it may be reused once cancel_unregister
 *    or cancel_unregister_nowait returned, once its callback has started
 *    (from inside the callback, for instance), or once the source was freed
 *    without being cancelled.
 *
 * Memory order: everything a thread did before it requested cancellation
 * (cancel, fail, cancel_async, or a parent's cancellation) is visible to a
 * thread that observes the request (is_requested or check returning it,
 * wait returning true, a callback running, or the descriptor polling
 * readable).
 */
#ifndef CANCEL_H
#define CANCEL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#else
#include <stdatomic.h>
#endif

#define CANCEL_VERSION_MAJOR 0
#define CANCEL_VERSION_MINOR 1
#define CANCEL_VERSION_PATCH 0

#if defined(__GNUC__)
#define CANCEL_API __attribute__((visibility("default")))
#else
#define CANCEL_API
#endif

/* ------------------------------------------------------------------------
 * Types
 * ------------------------------------------------------------------------ */

/* The owner's right to cancel. Opaque; created by cancel_source_new(). */
typedef struct cancel_source cancel_source;

/* Private: the first member of every source, the word the inline check reads.
 * Only the library writes it. */
struct cancel__state {
#ifdef __cplusplus
    uint32_t cancel__word; /* accessed with __atomic builtins only */
#else
    _Atomic uint32_t cancel__word;
#endif
};

/* A listen-only view of a source. A value type of one pointer: copy it
 * freely. The zero value is CANCEL_TOKEN_NONE. */
typedef struct cancel_token {
    struct cancel__state *cancel__impl; /* private */
} cancel_token;

/* A token that can never be cancelled (for callers that do not need
 * cancellation). */
#ifdef __cplusplus
#define CANCEL_TOKEN_NONE (cancel_token{})
#else
#define CANCEL_TOKEN_NONE ((cancel_token){0})
#endif

/* A timeout that never expires, or "disarm" for cancel_source_cancel_after. */
#define CANCEL_INFINITE ((int64_t)-1)

/* A cancellation callback. */
typedef void cancel_fn(void *arg);

/* Storage for one callback registration, provided by the caller, so that
 * registering allocates nothing. Zero-initialise it (CANCEL_REGISTRATION_INIT)
 * if it may be unregistered before it is ever registered. */
typedef struct cancel_registration {
    void *cancel__private[6];
} cancel_registration;
#define CANCEL_REGISTRATION_INIT {{0}}

/* Why a token was cancelled. */
typedef enum cancel_reason {
    CANCEL_REASON_NONE = 0,  /* not cancelled */
    CANCEL_REASON_REQUESTED, /* the owner called cancel_source_cancel / _cancel_async */
    CANCEL_REASON_TIMEOUT,   /* a deadline passed */
    CANCEL_REASON_FAILED,    /* the owner called cancel_source_fail */
    CANCEL_REASON_SIGNAL,    /* a POSIX signal */
} cancel_reason;

typedef struct cancel_cause {
    cancel_reason reason;
    int code;            /* error for FAILED, signal number for SIGNAL, else 0 */
    const char *message; /* may be NULL; valid while the token is held */
    const char *origin;  /* name of the source where cancellation started; may be NULL */
} cancel_cause;

/* ------------------------------------------------------------------------
 * Sources: owned by whoever created them.
 * ------------------------------------------------------------------------ */

/* Creates a source that is not cancelled. Returns NULL with errno ENOMEM.
 * Allocates once; makes no system call. Thread-safe. */
CANCEL_API cancel_source *cancel_source_new(void);

/* Creates a source that is cancelled when any of the `count` parent tokens is
 * (as well as by its own owner). If a parent is already cancelled, the new
 * source is born cancelled. Parents that can never be cancelled
 * (CANCEL_TOKEN_NONE, or a freed source's token) and duplicates are ignored;
 * count may be 0. The child's cause is the parent's cause, its origin naming
 * the source where the cancellation started. The parents' tokens need only be
 * valid during the call: freeing a parent later simply unhooks it.
 * Allocates once (the links to the parents live inside the source). A link
 * needs no thread of its own: if the library thread (see the conventions
 * above) is not running yet, creating a linked source starts it, since a
 * parent cancelled asynchronously hands the child's cancellation to it.
 * Returns NULL with errno EINVAL (parents NULL and count > 0) or ENOMEM.
 * Thread-safe. */
CANCEL_API cancel_source *cancel_source_new_linked(const cancel_token *parents, size_t count);

/* The most common source in one call (Go's context.WithTimeout): a source
 * linked to `parent` (CANCEL_TOKEN_NONE: no parent), cancelled with reason
 * TIMEOUT after `timeout_ns` (CANCEL_INFINITE: no deadline of its own; the
 * parent's still applies, see cancel_token_deadline), named `name` (copied;
 * NULL: unnamed). Born cancelled if the parent is. Costs what
 * cancel_source_new_linked, cancel_source_set_name and
 * cancel_source_cancel_after cost together. Returns NULL with errno EINVAL
 * (another negative timeout), ENOMEM, or EAGAIN (the library thread could
 * not be started); nothing is left behind. Thread-safe. */
CANCEL_API cancel_source *cancel_source_new_child(cancel_token parent, int64_t timeout_ns, const char *name);

/* Frees the owner's handle. Does not cancel and runs no callback: if the
 * source is not cancelled, its registrations become inert (they never run;
 * unregistering them returns false) and its tokens can never be cancelled
 * any more: threads blocked in cancel_token_wait wake and return false, and
 * the descriptor turns readable (it stays open for holders of a retained
 * token; without one it is closed here, after being signalled, so a poller
 * that must see it should retain the token). If it is already cancelled,
 * callbacks whose dispatch is under way still run. Unhooks the source from its parents and
 * disarms its deadline. The memory lives on while retained tokens exist.
 * NULL is a no-op. Not to be called twice, nor concurrently with calls that
 * use a borrowed token of this source. May be called from a callback,
 * including one of this source. */
CANCEL_API void cancel_source_free(cancel_source *src);

/* Returns a borrowed token of src (CANCEL_TOKEN_NONE for NULL). Thread-safe,
 * AS-safe, no side effect. */
CANCEL_API cancel_token cancel_source_token(const cancel_source *src);

/* Requests cancellation with reason REQUESTED. Exactly one of the concurrent
 * cancel, fail, cancel_async, deadline or parent requests wins and fixes the
 * cause; the others return false at once. The winner wakes every waiter and
 * the descriptor, then runs the callbacks of the source and of its linked
 * descendants on the calling thread, depth first, each source's callbacks in
 * reverse registration order, and returns true after they all ran: then the
 * source and all its descendants are cancelled. (A descendant that another
 * parent's cancellation reached first is dispatched by that canceller; its
 * callbacks may still be running.) No lock is held while a callback runs. Returns false also for a NULL source (errno
 * EINVAL). Thread-safe. */
CANCEL_API bool cancel_source_cancel(cancel_source *src);

/* Like cancel_source_cancel with reason FAILED: `code` is any int of the
 * caller's choice, reported as the cause's code (an errno value if you want
 * strerror to make sense of it; the library never interprets it), and
 * `message` (may be NULL) is copied. If the copy cannot be made, the source
 * is cancelled all the same and the cause's message reads "(message lost:
 * out of memory)". Thread-safe. */
CANCEL_API bool cancel_source_fail(cancel_source *src, int code, const char *message);

/* Requests cancellation (reason REQUESTED) without running callbacks on the
 * caller: the request is visible and waiters and the descriptor are woken
 * before it returns; the callbacks run soon on the library thread. Returns
 * true if this call won (see cancel_source_cancel). Linked descendants are
 * cancelled by the library thread too, as it walks the tree, shortly after
 * this returns. AS-safe: it uses only lock-free atomic operations, the futex
 * and write system calls, and a lock-free queue linked through the source
 * itself, allocates nothing and takes no lock; errno is preserved. The
 * library thread exists whenever a callback can be pending (it is started
 * by the first registration in the process), with three exceptions, when
 * the callbacks wait in the queue for its next start (by the next
 * registration, linked source or deadline): if pthread_create failed; in a
 * child process after fork(); and after cancel_quiesce stopped it.
 * Thread-safe. */
CANCEL_API bool cancel_source_cancel_async(cancel_source *src);

/* Like cancel_source_cancel_async with reason SIGNAL and code `signo`: what a
 * signal handler calls to turn a signal into a cancellation. AS-safe.
 * Returns false with errno EINVAL for a NULL source or a signal number
 * outside 1..255. */
CANCEL_API bool cancel_source_cancel_signal(cancel_source *src, int signo);

/* Arms (or re-arms) a deadline: the source is cancelled with reason TIMEOUT
 * `delay_ns` nanoseconds from now (cancel_now()'s clock), its callbacks
 * running on the library thread. A delay of 0 cancels at once in the manner
 * of cancel_source_cancel_async. CANCEL_INFINITE disarms a pending deadline.
 * Returns 0, EINVAL (NULL source, or another negative delay), ECANCELED
 * (already cancelled; nothing armed), ENOMEM, or EAGAIN (the library thread
 * could not be started). Thread-safe. */
CANCEL_API int cancel_source_cancel_after(cancel_source *src, int64_t delay_ns);

/* Makes an uncancelled source reusable: disarms its deadline and removes
 * every callback registration (none of them ever runs; unregistering them
 * returns false). Linked children stay linked. Returns false if the source
 * is cancelled (or NULL: errno EINVAL), true otherwise. Thread-safe; a
 * cancel that overlaps either wins (reset returns false) or finds the
 * registrations already removed. */
CANCEL_API bool cancel_source_try_reset(cancel_source *src);

/* Names the source (the name is copied); the name appears as `origin` in
 * causes. A source is named at most once. Returns 0, EINVAL (NULL argument),
 * EBUSY (already named) or ENOMEM. Thread-safe. */
CANCEL_API int cancel_source_set_name(cancel_source *src, const char *name);

/* The source's name, or NULL. Valid while the source lives. */
CANCEL_API const char *cancel_source_name(const cancel_source *src);

/* ------------------------------------------------------------------------
 * Tokens: listen only. Every function accepts CANCEL_TOKEN_NONE.
 * ------------------------------------------------------------------------ */

/* True once cancellation was requested. One acquire load, no lock, no
 * write, inlined: call it as often as you like. Thread-safe, AS-safe. */
CANCEL_API inline bool cancel_token_is_requested(cancel_token tok)
{
    if (tok.cancel__impl == NULL)
        return false;
#ifdef __cplusplus
    return (__atomic_load_n(&tok.cancel__impl->cancel__word, __ATOMIC_ACQUIRE) & 1u) != 0;
#else
    return (atomic_load_explicit(&tok.cancel__impl->cancel__word, memory_order_acquire) & 1u) != 0;
#endif
}

/* 0, or ECANCELED once cancellation was requested. Inlined like
 * cancel_token_is_requested. Thread-safe, AS-safe. */
CANCEL_API inline int cancel_token_check(cancel_token tok)
{
    return cancel_token_is_requested(tok) ? ECANCELED : 0;
}

/* False for CANCEL_TOKEN_NONE and for tokens of sources freed without being
 * cancelled; true otherwise. Thread-safe, AS-safe. */
CANCEL_API bool cancel_token_can_be_canceled(cancel_token tok);

/* Why the token was cancelled ({CANCEL_REASON_NONE, 0, NULL, NULL} while it
 * is not). The strings stay valid while the token is held. Thread-safe. */
CANCEL_API cancel_cause cancel_token_cause(cancel_token tok);

/* The earliest armed deadline of the token's source and of all its
 * ancestors (the parents it is linked to, theirs, and so on), as an absolute
 * time on cancel_now()'s clock, or CANCEL_INFINITE: what a remote call sends
 * as its remaining budget (Go's ctx.Deadline()). A child created under a
 * parent with a deadline reports the parent's without arming one of its own.
 * A cancelled token keeps the deadline it had (an ancestor freed since no
 * longer counts). Walks the ancestors under their locks: cheap for the usual
 * shallow tree, never on a hot path. Thread-safe. */
CANCEL_API int64_t cancel_token_deadline(cancel_token tok);

/* Takes a reference that keeps the token valid after its source is freed,
 * until cancel_token_release. Returns tok. Thread-safe, AS-safe. */
CANCEL_API cancel_token cancel_token_retain(cancel_token tok);

/* Drops a reference taken by cancel_token_retain. Thread-safe. */
CANCEL_API void cancel_token_release(cancel_token tok);

/* Blocks until the token is cancelled (returns true, at once if it already
 * is) or `timeout_ns` nanoseconds passed (returns false). CANCEL_INFINITE
 * waits forever. Returns false at once for a token that can never be
 * cancelled, and wakes with false when its source is freed uncancelled.
 * Another negative timeout returns false with errno EINVAL. Allocates
 * nothing and uses no descriptor (a futex on Linux); EINTR is retried.
 * Thread-safe; may be called from a callback (of another source). */
CANCEL_API bool cancel_token_wait(cancel_token tok, int64_t timeout_ns);

/* Returns a descriptor that polls readable (POLLIN) once the token is
 * cancelled, or once its source was freed uncancelled (check
 * cancel_token_is_requested to tell which). An eventfd made with
 * EFD_CLOEXEC | EFD_NONBLOCK on first request, at most one per source, owned
 * by the library and closed when the source's memory is released: do not
 * read, write or close it. Returns -1 with errno EINVAL (CANCEL_TOKEN_NONE),
 * EMFILE/ENFILE/ENOMEM, nothing else disturbed. Thread-safe. */
CANCEL_API int cancel_token_fd(cancel_token tok);

/* ------------------------------------------------------------------------
 * Time: the clock of every deadline and timeout, and a manual clock for
 * tests (.NET's FakeTimeProvider).
 * ------------------------------------------------------------------------ */

/* The library's clock in nanoseconds: CLOCK_MONOTONIC, or the manual clock
 * while it is on. Thread-safe, AS-safe. */
CANCEL_API int64_t cancel_now(void);

/* Switches the manual clock on or off; returns 0. On: cancel_now() freezes
 * at its current reading and moves only with cancel_clock_advance; every
 * deadline (armed before or after) and every timeout of the library follows
 * it: cancel_token_wait, the blocking calls of <cancel/...>, task waits, and
 * cancel_source_info.deadline_ns. Off: cancel_now() is CLOCK_MONOTONIC again
 * (it may jump back); deadlines are absolute, so a pending one fires when
 * real time reaches it, at once if it already passed. What stays on real
 * time: cancel_quiesce's timeout, and clocks of other libraries (a deadline
 * handed to gRPC is converted through the time remaining). Meant for a
 * test's own process, switched before its threads start waiting.
 * Thread-safe. */
CANCEL_API int cancel_clock_use_manual(bool on);

/* True while the manual clock is on. Thread-safe, AS-safe. */
CANCEL_API bool cancel_clock_is_manual(void);

/* Moves the manual clock forward by `ns`; ignored while it is off or for
 * ns <= 0. When it returns, every source whose deadline is due is cancelled
 * (reason TIMEOUT), their callbacks have run on the library thread (on the
 * calling thread if the library thread is not running, after fork() or
 * cancel_quiesce; either way, do not hold a lock those callbacks take), and
 * every wait whose timeout passed has returned or is returning. Thread-safe;
 * from a callback on the library thread it does not wait for the
 * callbacks. */
CANCEL_API void cancel_clock_advance(int64_t ns);

/* ------------------------------------------------------------------------
 * Callback registrations.
 * ------------------------------------------------------------------------ */

/* Registers fn(arg) to run once when the token is cancelled, in storage the
 * caller owns (nothing is allocated; it cannot fail for memory). Returns 0
 * when registered. If the token is already cancelled, runs fn(arg) at once
 * on the calling thread and returns ECANCELED. On a token that can never be
 * cancelled, returns 0 and the registration is inert (fn never runs).
 * Returns EINVAL for a NULL reg or fn. Callbacks run on the thread that
 * requested cancellation (or the library thread for cancel_async and
 * deadlines), never under a lock of the library, each at most once. The
 * first registration in the process starts the library thread (one per
 * process) so that cancel_async can always hand callbacks off.
 * Thread-safe; from a callback, too. */
CANCEL_API int cancel_register(cancel_token tok, cancel_registration *reg, cancel_fn *fn, void *arg);

/* Like cancel_register but never runs fn inline: on a cancelled token it
 * returns ECANCELED without calling fn, so that a caller may register while
 * holding a lock that fn takes. */
CANCEL_API int cancel_register_noinvoke(cancel_token tok, cancel_registration *reg, cancel_fn *fn,
                                        void *arg);

/* Removes a registration. Returns true if it removed the callback before it
 * started (it will never run); false if it already ran or is running, or the
 * registration is inert or was already removed (harmless). If the callback
 * is running on another thread, waits until it returns, so that the caller
 * may then free what `arg` points to (concurrent calls for the same
 * registration all wait); called from inside that callback (or from a
 * callback nested in it on the same thread), it does not wait. A callback
 * that ran inline in cancel_register is over when that call returns.
 * Deadlock rule: if waiting would close a cycle (the callback's thread is
 * itself waiting, directly or through others, in cancel_unregister for a
 * callback running on this thread), it returns false at once with errno
 * EDEADLK; errno is left alone otherwise. The registration's token must be
 * valid (source alive, or a retained reference held) unless the source was
 * freed without being cancelled. Thread-safe; from a callback, too. */
CANCEL_API bool cancel_unregister(cancel_registration *reg);

/* Like cancel_unregister but never blocks: false means the callback already
 * ran or is running (possibly still). The library never touches a
 * registration's storage after starting its callback, so the storage may be
 * reused as soon as this returns. */
CANCEL_API bool cancel_unregister_nowait(cancel_registration *reg);

/* ------------------------------------------------------------------------
 * Watching a descriptor on the library thread: for adapters that must act
 * when a descriptor turns readable (a child process ended: its pidfd) with
 * no thread of their own.
 * ------------------------------------------------------------------------ */

/* Storage for one watch, provided by the caller (nothing is allocated). */
typedef struct cancel_fd_watch {
    void *cancel__private[5];
} cancel_fd_watch;

/* What runs when the descriptor is ready. */
typedef void cancel_fd_fn(cancel_fd_watch *watch, void *arg);

/* Runs fn(watch, arg) on the library thread whenever `fd` is readable or
 * hung up, until cancel_unwatch_fd. Level-triggered: fn must consume what
 * made it ready, or unwatch, or it runs again at once. fn may now and then
 * run when `fd` is not ready (storage unwatched and watched again at the
 * wrong moment): read it without blocking. fn shares the library
 * thread with every asynchronous callback and deadline: keep it short, never
 * block. The descriptor must stay open while watched; a watched descriptor
 * keeps the library thread running (cancel_quiesce reports EBUSY); after
 * fork() the child watches nothing. Returns 0, EINVAL (NULL watch or fn,
 * negative fd), EEXIST (fd already watched), EPERM (fd cannot be watched:
 * a regular file), EBADF, EMFILE/ENFILE/ENOMEM (the library thread's epoll
 * instance could not be made), or EAGAIN (the thread could not be started).
 * Thread-safe. */
CANCEL_API int cancel_watch_fd(cancel_fd_watch *watch, int fd, cancel_fd_fn *fn, void *arg);

/* Stops watching. Returns true if it was watched. Called from any thread
 * but the library thread, it waits until a running fn of this watch has
 * returned, so that what `arg` points to may be freed afterwards (so do not
 * call it holding a lock fn takes); called from fn itself, or anything else
 * on the library thread, it does not wait. The storage is the caller's again
 * when it returns. Thread-safe. */
CANCEL_API bool cancel_unwatch_fd(cancel_fd_watch *watch);

/* ------------------------------------------------------------------------
 * Observability.
 * ------------------------------------------------------------------------ */

/* A snapshot of one source. */
typedef struct cancel_source_info {
    cancel_reason reason;  /* CANCEL_REASON_NONE while not cancelled */
    size_t registrations;  /* callbacks registered and not yet started */
    size_t children;       /* linked sources hooked onto this one */
    size_t parents;        /* parents that can still cancel this source */
    int64_t deadline_ns;   /* time left until the armed deadline (>= 0), or CANCEL_INFINITE */
} cancel_source_info;

/* Fills *out. Returns 0 or EINVAL. Counting walks the source's list under its
 * lock: a debugging aid, not a hot path. Thread-safe. */
CANCEL_API int cancel_source_get_info(const cancel_source *src, cancel_source_info *out);

/* Process-wide figures. */
typedef struct cancel_stats {
    size_t deadlines_pending; /* armed deadlines not yet fired or disarmed (a deadline
                                 armed while its source was being cancelled may count
                                 until it expires, harmlessly, or the source is freed) */
    bool thread_running;      /* the library thread is running */
    size_t slow_callbacks;    /* callbacks that ran longer than the threshold of
                                 cancel_set_slow_callback_threshold, since the start */
    size_t watched_fds;       /* descriptors the library thread watches: cancel_watch_fd
                                 (freed child processes being reaped, for one), and
                                 two per token exported or received across a process
                                 boundary until it is settled */
} cancel_stats;

/* Fills *out. Returns 0 or EINVAL. Thread-safe. */
CANCEL_API int cancel_get_stats(cancel_stats *out);

/* Sets the duration above which a callback run by a cancellation counts as
 * slow (cancel_stats.slow_callbacks): a callback that stalls its canceller,
 * or the library thread, is worth knowing about. CANCEL_INFINITE (any
 * negative value) turns the measurement off, which is the default: then a
 * dispatch reads no clock. Returns the previous threshold. Thread-safe. */
CANCEL_API int64_t cancel_set_slow_callback_threshold(int64_t ns);

/* Runs, or waits for, everything the library thread owes: the callbacks of
 * asynchronous cancels and signals already requested, and the releases that
 * wait for them (a source freed while its callbacks were queued keeps its
 * descriptor until then). Then, if no deadline is armed and no descriptor is
 * watched, stops the library thread: nothing of the library runs in the
 * background any more (valgrind sees no thread; a plugin can be unloaded).
 * The thread starts again on demand: the next registration, linked source,
 * deadline or exported token. Until then, callbacks of asynchronous cancels
 * requested meanwhile (from a signal handler, say) wait for it: call this
 * when a phase of the program is over, not in its middle. The library does
 * the same, ignoring armed deadlines, when it is unloaded or the process
 * exits. Returns 0 (stopped, or not running), EBUSY (deadlines armed or
 * descriptors watched: it runs on; a deadline armed at the very moment its
 * source was cancelled counts until it expires or the source is freed), ETIMEDOUT (`timeout_ns` of real time
 * passed first: a callback is still running; CANCEL_INFINITE waits), EINVAL
 * (another negative timeout), or EDEADLK (called from a callback on the
 * library thread). Thread-safe. */
CANCEL_API int cancel_quiesce(int64_t timeout_ns);

/* A static English name for a reason ("none", "requested", "timeout",
 * "failed", "signal"), or "unknown". AS-safe. */
CANCEL_API const char *cancel_reason_name(cancel_reason reason);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_H */
