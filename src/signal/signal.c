/*
 * Signal watches: a signal's delivery cancels a source.
 *
 * Locking and lifetime. A process-wide table has one slot per signal number.
 * `table_mu` protects the slots' ownership (`owner`) and serialises every
 * sigaction(2) that installs or restores a watched signal, so that the
 * previous action saved in a slot is exactly what the kernel had when our
 * handler went in. The handler never takes the lock: it reads only its
 * slot, which lives as long as the process, never the watch (heap memory
 * that cancel_signal_watch_free releases). Of the slot it reads `src`, and,
 * once it saw a non-NULL `src`, `flags` and `old`.
 *
 * The hand-off that lets a watch be freed while a handler runs on another
 * thread: the handler increments the slot's `active` count, then loads
 * `src`; free first restores the previous action (no new delivery reaches
 * our handler), then stores NULL into `src`, then waits until `active` is 0.
 * All four are seq_cst: either the handler's load of `src` comes after the
 * NULL store (it sees NULL, or a newer watch of the same signal, which is a
 * fair receiver), or its increment comes before free's load of `active`,
 * and free waits for it to leave. So once free returns, no handler still
 * holds the source pointer, and the owner may free the source. The handler's
 * decrement is a release that the acquire of free's last load pairs with:
 * its reads of `flags` and `old` happen before the slot is filled again.
 * A new watch writes `old` and `flags` before publishing `src` (a seq_cst
 * store, so a release), and the handler reads them after its load.
 *
 * The handler calls only async-signal-safe functions: the token's inline
 * check, cancel_source_cancel_signal, sigaction and raise; it preserves
 * errno. The waiting in free is bounded: a handler is a few calls long. It
 * spins briefly, then sleeps in 50 µs naps.
 */
#include "cancel/signal.h"

#include "platform/platform.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

struct cancel_signal_watch {
    cancel_source *src;
    size_t count;
    int signals[]; /* r/o after creation */
};

struct slot {
    _Atomic(cancel_source *) src; /* NULL while unwatched; written under table_mu */
    _Atomic int active;           /* handlers inside for this signal */
    unsigned flags;               /* written under table_mu before src is published */
    struct sigaction old;         /* the same */
    cancel_signal_watch *owner;   /* under table_mu */
};

static pthread_mutex_t table_mu = PTHREAD_MUTEX_INITIALIZER;
static struct slot slots[_NSIG];

static void on_signal(int signo)
{
    int saved = errno;
    struct slot *s = &slots[signo];
    atomic_fetch_add(&s->active, 1); /* seq_cst: the hand-off above */
    cancel_source *src = atomic_load(&s->src);
    if (src) {
        if (!cancel_token_is_requested(cancel_source_token(src))) {
            cancel_source_cancel_signal(src, signo);
        } else if (s->flags & CANCEL_SIGNAL_FORCE_SECOND) {
            /* The second one: the previous disposition takes it. The signal
             * is blocked while we run, so it is delivered once we return. */
            sigaction(signo, &s->old, NULL);
            raise(signo);
        }
    }
    /* release: our reads of the slot happen before free reuses it. */
    atomic_fetch_sub_explicit(&s->active, 1, memory_order_release);
    errno = saved;
}

/* Puts back a slot's previous action and waits until no handler uses it. */
static void slot_release(int signo)
{
    struct slot *s = &slots[signo];
    sigaction(signo, &s->old, NULL);
    atomic_store(&s->src, NULL);
    /* seq_cst, and acquire for the handlers' release decrements. */
    for (int spins = 0; atomic_load(&s->active) != 0; spins++) {
        if (spins < 100) {
            cancel__cpu_relax();
        } else {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
    }
    s->owner = NULL;
}

/* Signals the kernel sends for a fault of the instruction that runs: a
 * handler that returns re-runs the instruction, which faults again, for
 * ever. Cancelling cannot be the answer to those. */
static bool is_fault(int sig)
{
    return sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL || sig == SIGTRAP || sig == SIGSYS;
}

int cancel_signal_watch_new(cancel_source *src, const int *signals, size_t count, unsigned flags,
                            cancel_signal_watch **out)
{
    if (!src || !signals || !out || count == 0 || (flags & ~CANCEL_SIGNAL_FORCE_SECOND))
        return EINVAL;
    int saved = errno;
    sigset_t seen;
    sigemptyset(&seen);
    for (size_t i = 0; i < count; i++) {
        int sig = signals[i];
        struct sigaction cur;
        /* sigaction refuses SIGKILL, SIGSTOP and the C library's own
         * signals even when only asked: nothing is installed yet. */
        if (sig <= 0 || sig >= _NSIG || sig == SIGKILL || sig == SIGSTOP || is_fault(sig) ||
            sigismember(&seen, sig) || sigaction(sig, NULL, &cur) != 0) {
            errno = saved;
            return EINVAL;
        }
        sigaddset(&seen, sig);
    }
    if (count > (SIZE_MAX - sizeof(cancel_signal_watch)) / sizeof(int))
        return ENOMEM;
    cancel_signal_watch *w = malloc(sizeof *w + count * sizeof(int));
    if (!w) {
        errno = saved;
        return ENOMEM;
    }
    w->src = src;
    w->count = count;
    for (size_t i = 0; i < count; i++)
        w->signals[i] = signals[i];

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);

    int err = 0;
    pthread_mutex_lock(&table_mu);
    for (size_t i = 0; i < count; i++) {
        if (slots[signals[i]].owner) {
            err = EBUSY;
            break;
        }
    }
    size_t installed = 0;
    for (; !err && installed < count; installed++) {
        int sig = signals[installed];
        struct slot *s = &slots[sig];
        if (sigaction(sig, NULL, &s->old) != 0) {
            err = errno;
            break;
        }
        s->flags = flags;
        s->owner = w;
        atomic_store(&s->src, src); /* seq_cst, a release: old and flags before it */
        if (sigaction(sig, &sa, NULL) != 0) {
            err = errno;
            atomic_store(&s->src, NULL);
            s->owner = NULL;
            break;
        }
    }
    if (err) {
        while (installed > 0)
            slot_release(signals[--installed]);
    }
    pthread_mutex_unlock(&table_mu);
    errno = saved;
    if (err) {
        free(w);
        return err;
    }
    *out = w;
    return 0;
}

void cancel_signal_watch_free(cancel_signal_watch *w)
{
    if (!w)
        return;
    int saved = errno;
    pthread_mutex_lock(&table_mu);
    for (size_t i = 0; i < w->count; i++)
        slot_release(w->signals[i]);
    pthread_mutex_unlock(&table_mu);
    free(w);
    errno = saved;
}
