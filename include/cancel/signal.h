/*
 * <cancel/signal.h>: cancel a source when a POSIX signal arrives (Go's
 * signal.NotifyContext, .NET's Console.CancelKeyPress).
 *
 * A watch installs a handler for a few signals; the first delivery of any of
 * them cancels the source with reason CANCEL_REASON_SIGNAL and the signal
 * number as the cause's code (cancel_source_cancel_signal: asynchronous, so
 * the source's callbacks run on the library thread, never in the handler).
 * Freeing the watch puts the previous handlers back exactly as they were.
 *
 *     cancel_source *shutdown = cancel_source_new();
 *     cancel_signal_watch *w;
 *     int sigs[] = {SIGINT, SIGTERM};
 *     if (cancel_signal_watch_new(shutdown, sigs, 2, CANCEL_SIGNAL_FORCE_SECOND, &w) != 0)
 *         ...
 *     serve(cancel_source_token(shutdown));   // returns once Ctrl+C cancelled it
 *     cancel_signal_watch_free(w);
 *     cancel_source_free(shutdown);
 *
 * Details that hold for every watch:
 *  - Watches are process-wide, like signal dispositions: a signal can be
 *    watched by one watch at a time (EBUSY otherwise, even for the same
 *    source). Any thread may receive the signal; the calling thread's signal
 *    mask is never changed (a thread that blocks the signal simply does not
 *    receive it there).
 *  - A signal that was ignored (SIG_IGN) before the watch is watched all the
 *    same; SIG_IGN comes back on free.
 *  - The handler is installed with SA_RESTART and SA_ONSTACK and an empty
 *    sa_mask. It preserves errno and touches only memory that lives as long
 *    as the process, so a watch may be freed while a handler runs on another
 *    thread.
 *  - The calls of <cancel/io.h> retry EINTR, so they are not disturbed by the
 *    handler; they return ECANCELED once the source is cancelled.
 */

/* The system's <signal.h>, for SIGINT and the like. This header shares the
 * system header's file name, so a build that puts include/cancel itself on
 * the search path reaches this file for <signal.h>: include_next continues
 * the search past the directory this file was found in, outside the include
 * guard, so that the system's header is always the one included, however
 * this file was reached. (A GCC and Clang extension: hence system_header,
 * which keeps -Wpedantic quiet about it.) */
#if defined(__GNUC__)
#pragma GCC system_header
#include_next <signal.h>
#else
#include <signal.h>
#endif

#ifndef CANCEL_SIGNAL_H
#define CANCEL_SIGNAL_H

#include <cancel.h>

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cancel_signal_watch cancel_signal_watch;

/* A delivery of a watched signal that finds the source already cancelled
 * (by this watch or by anything else) restores the disposition the signal
 * had before the watch and raises the signal again, so that the previous
 * disposition acts on it: with the default one, the second Ctrl+C ends the
 * program at once while a graceful shutdown is stuck. */
#define CANCEL_SIGNAL_FORCE_SECOND 1u

/* Watches `count` signals (`signals`, each in 1.._NSIG-1, not SIGKILL or
 * SIGSTOP nor a signal the C library reserves, nor a fault signal: SIGSEGV,
 * SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, whose handler returning re-runs
 * the faulting instruction) for `src`, which must stay
 * alive until cancel_signal_watch_free returns. `flags`: 0 or
 * CANCEL_SIGNAL_FORCE_SECOND. Stores the watch in *out and returns 0, or
 * returns: EINVAL (NULL src, signals or out; count 0; a signal out of range
 * or not catchable; the same signal twice; unknown flags), EBUSY (one of the
 * signals is already watched, by any watch), ENOMEM. When it fails nothing
 * is installed and *out is untouched. Thread-safe; not async-signal-safe. */
CANCEL_API int cancel_signal_watch_new(cancel_source *src, const int *signals, size_t count, unsigned flags,
                                       cancel_signal_watch **out);

/* Stops watching: puts back each signal's previous action (handler, flags
 * and mask, as sigaction(2) returned them), waits for handlers of this watch
 * running on other threads to leave (they are a few instructions long), and
 * frees the watch. Signals delivered after it returns act as before the
 * watch. NULL is a no-op. Thread-safe; not async-signal-safe; may be called
 * from a cancellation callback (including one of the watched source). */
CANCEL_API void cancel_signal_watch_free(cancel_signal_watch *w);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_SIGNAL_H */
