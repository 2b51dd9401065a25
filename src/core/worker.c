/*
 * The library thread: one per process, started on first need (the first
 * registration, linked source, deadline or watched descriptor). It
 * dispatches the callbacks of sources cancelled by cancel_async or by a
 * deadline, fires deadlines, and runs the handlers of watched descriptors.
 * It sleeps on a futex until the earliest deadline or a wake-up (in epoll
 * instead, once a descriptor is watched); it never polls.
 *
 * The queue of sources to dispatch is a lock-free stack threaded through
 * next_pending, pushed from any context (signal handlers included) and
 * emptied whole by the thread, so it has no ABA problem.
 *
 * Stopping (cancel_quiesce, and the library's destructor so that dlclose is
 * safe). Under start_mu, the stopper first waits for the thread to drain the
 * queue (a barrier sequence the thread publishes), then clears `running`
 * (seq_cst) and asks the thread to stop. The thread stops only if nothing is
 * left to serve: no queued source, no pending deadline, no watch (checked
 * under their own locks), unless the stop is forced; otherwise it refuses and
 * the stopper sets `running` again. Whoever files a deadline or a watch
 * re-reads `running` afterwards (cancel__worker_filed): either the thread's
 * check, which comes after `running` was cleared, sees the new entry and
 * refuses, or the filer's read comes after the check and sees `running`
 * cleared, and starts a new thread once the stopper lets go of start_mu.
 *
 * Lock order: start_mu, then the timer lock or watch_mu (never both).
 */
#include "worker.h"

#include "callback_wait.h"
#include "dispatch.h"
#include "lock.h"
#include "timer.h"

#include <limits.h>
#include <pthread.h>
#include <unistd.h>

_Atomic int cancel__worker_wanted_flag, cancel__worker_running_flag;

static _Atomic uint32_t wake_seq;              /* bumped by every kick; the futex word */
static _Atomic(struct cancel_source *) queue;  /* sources to dispatch */
static _Atomic uint32_t barrier_req, barrier_done; /* quiesce's drain barrier */
enum { STOP_NONE, STOP_ASKED, STOP_FORCED };
enum { RESULT_NONE, RESULT_STOPPED, RESULT_REFUSED };
static _Atomic int stop_req;                   /* STOP_*: written under start_mu */
static _Atomic uint32_t stop_result;           /* RESULT_*: the thread's answer; a futex word */

static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_t thread;                       /* under start_mu, while running */
static const void *_Atomic thread_self;        /* cancel__self() of the thread */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* Watched descriptors. The poller and its wake-up descriptor are made with
 * the first watch and kept until the thread stops with no watch left. */
static pthread_mutex_t watch_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cancel__watch *watches;          /* under watch_mu */
static size_t nwatches;                        /* under watch_mu */
static struct cancel__watch *serving;          /* under watch_mu: whose handler runs now */
static pthread_cond_t served = PTHREAD_COND_INITIALIZER; /* serving went back to NULL */
static _Atomic int poller = -1, poller_wake = -1;
static char poller_wake_key;                   /* the epoll key of poller_wake */

void cancel__worker_kick(void)
{
    /* seq_cst: release pairs with the acquire load at the top of the loop;
     * the total order with the poller's creation is argued in watch_add. */
    atomic_fetch_add(&wake_seq, 1);
    cancel__futex_wake(&wake_seq, 1);
    int pw = atomic_load(&poller_wake);
    if (pw >= 0)
        cancel__eventfd_signal(pw);
}

void cancel__worker_post(struct cancel_source *s)
{
    struct cancel_source *head = atomic_load_explicit(&queue, memory_order_relaxed);
    do
        s->next_pending = head;
    /* release: publishes next_pending and the mark to the thread. */
    while (!atomic_compare_exchange_weak_explicit(&queue, &head, s, memory_order_release,
                                                  memory_order_relaxed));
    cancel__worker_kick();
}

/* Dispatches everything queued, oldest request first. Returns whether there
 * was anything. On the library thread, or on a quiescing caller's while the
 * thread does not run. */
static bool drain_queue(void)
{
    /* acquire: pairs with the release CAS in cancel__worker_post. */
    struct cancel_source *q = atomic_exchange_explicit(&queue, NULL, memory_order_acquire);
    struct cancel_source *fifo = NULL;
    bool any = q != NULL;
    while (q) {
        struct cancel_source *n = q->next_pending;
        q->next_pending = fifo;
        fifo = q;
        q = n;
    }
    while (fifo) {
        struct cancel_source *n = fifo->next_pending;
        cancel__dispatch(fifo);
        fifo = n;
    }
    return any;
}

size_t cancel__watch_count(void)
{
    pthread_mutex_lock(&watch_mu);
    size_t n = nwatches;
    pthread_mutex_unlock(&watch_mu);
    return n;
}

/* Runs the handler of one ready descriptor, or sleeps until `next` (-1:
 * until woken). */
static void sleep_or_serve(uint32_t seq, int64_t next)
{
    int p = atomic_load(&poller);
    if (p < 0) {
        /* Returns at once if a kick bumped wake_seq since we read it. */
        cancel__futex_wait(&wake_seq, seq, next);
        return;
    }
    /* A kicker that read poller_wake as -1 only bumped wake_seq: look. */
    if (atomic_load(&wake_seq) != seq)
        return;
    void *key;
    if (!cancel__poller_wait(p, next, &key))
        return;
    if (key == &poller_wake_key) {
        uint64_t v;
        ssize_t r = read(atomic_load(&poller_wake), &v, sizeof v);
        (void)r;
        return;
    }
    /* Taking watch_mu orders this after the watch was added (its owner's
     * writes to it are visible), and finds whether it is still watched: a
     * remover on another thread waits for `serving`, so it cannot go away
     * while its handler runs. (Storage unwatched and watched again between
     * the event and this look may get one call it did not earn: handlers
     * must tolerate a descriptor that is not ready, cancel_watch_fd says.) */
    struct cancel__watch *w = key, *x;
    pthread_mutex_lock(&watch_mu);
    for (x = watches; x && x != w; x = x->next) {
    }
    if (x)
        serving = w; /* a remover on another thread now waits for us */
    pthread_mutex_unlock(&watch_mu);
    if (!x)
        return;
    w->ready(w);
    pthread_mutex_lock(&watch_mu);
    serving = NULL;
    pthread_cond_broadcast(&served);
    pthread_mutex_unlock(&watch_mu);
}

static void *worker_main(void *unused)
{
    (void)unused;
    atomic_store_explicit(&thread_self, cancel__self(), memory_order_relaxed);
    for (;;) {
        /* acquire: pairs with the kick's and quiesce's increments. */
        uint32_t seq = atomic_load_explicit(&wake_seq, memory_order_acquire);
        uint32_t barrier = atomic_load_explicit(&barrier_req, memory_order_acquire);

        drain_queue();
        int64_t next;
        struct cancel_source *due = cancel__timer_fire_due(&next);
        while (due) {
            struct cancel_source *n = due->next_pending;
            cancel__dispatch(due);
            due = n;
        }
        if (atomic_load_explicit(&queue, memory_order_relaxed))
            continue;
        /* Everything queued before `barrier` was asked for has run. release:
         * what the callbacks did is visible to the quiescing thread. */
        if (atomic_load_explicit(&barrier_done, memory_order_relaxed) != barrier) {
            atomic_store_explicit(&barrier_done, barrier, memory_order_release);
            cancel__futex_wake(&barrier_done, INT_MAX);
        }
        int stop = atomic_load(&stop_req);
        /* Claimed by CAS: a stopper that gave up waiting withdraws it the
         * same way, so exactly one of us decides. Not while the queue has
         * work: that is run first (a post after the claim is run by the
         * stopper once we are gone). */
        if (stop != STOP_NONE && !atomic_load(&queue) &&
            atomic_compare_exchange_strong(&stop_req, &stop, STOP_NONE)) {
            /* `running` is clear by now (see the top of the file). */
            bool idle = cancel__timer_pending() == 0 && cancel__watch_count() == 0;
            if (idle || stop == STOP_FORCED) {
                atomic_store_explicit(&thread_self, NULL, memory_order_relaxed);
                atomic_store(&stop_result, RESULT_STOPPED);
                cancel__futex_wake(&stop_result, INT_MAX);
                return NULL;
            }
            atomic_store(&stop_result, RESULT_REFUSED);
            cancel__futex_wake(&stop_result, INT_MAX);
        }
        if (cancel_clock_is_manual())
            next = -1; /* manual time moves only through cancel_clock_advance */
        sleep_or_serve(seq, next);
    }
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&start_mu);
    pthread_mutex_lock(&watch_mu);
    cancel__callback_wait_atfork_prepare();
    cancel__timer_atfork_prepare();
}

static void atfork_parent(void)
{
    cancel__timer_atfork_parent();
    cancel__callback_wait_atfork_parent();
    pthread_mutex_unlock(&watch_mu);
    pthread_mutex_unlock(&start_mu);
}

static void atfork_child(void)
{
    /* Only the forking thread exists in the child: the library thread is
     * gone and is started again on the next registration or deadline. The
     * poller is shared with the parent: the child closes its copy and
     * watches nothing (docs/design.md, fork). */
    cancel__timer_atfork_child();
    cancel__callback_wait_atfork_child();
    cancel__lock_atfork_child();
    watches = NULL;
    nwatches = 0;
    serving = NULL;
    pthread_cond_init(&served, NULL); /* copied mid-use, maybe */
    int p = atomic_exchange(&poller, -1), pw = atomic_exchange(&poller_wake, -1);
    if (p >= 0)
        cancel__fd_close(p);
    if (pw >= 0)
        cancel__fd_close(pw);
    atomic_store(&cancel__worker_running_flag, 0);
    atomic_store_explicit(&thread_self, NULL, memory_order_relaxed);
    atomic_store_explicit(&wake_seq, 0, memory_order_relaxed);
    atomic_store_explicit(&stop_req, STOP_NONE, memory_order_relaxed);
    pthread_mutex_unlock(&watch_mu);
    pthread_mutex_unlock(&start_mu);
}

static void install_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static bool on_library_thread(void)
{
    /* Only the thread itself can read its own identity here (relaxed: no
     * other thread's value can ever equal ours). */
    return atomic_load_explicit(&thread_self, memory_order_relaxed) == cancel__self();
}

int cancel__worker_ensure(void)
{
    if (!atomic_load(&cancel__worker_wanted_flag))
        atomic_store(&cancel__worker_wanted_flag, 1); /* before `running`: see request.c */
    if (atomic_load(&cancel__worker_running_flag))
        return 0;
    /* A callback on the library thread while a stopper cleared `running`:
     * the thread exists (it is us), and the stopper holds start_mu. What we
     * file now makes it refuse to stop (the top of the file). */
    if (on_library_thread())
        return 0;
    pthread_once(&atfork_once, install_atfork);
    /* From the first registration on, locks are in use: make their release
     * cheap (lock.h). */
    cancel__fence_setup();
    pthread_mutex_lock(&start_mu);
    int err = 0;
    if (!atomic_load(&cancel__worker_running_flag)) {
        err = cancel__thread_start(&thread, worker_main, NULL, "cancel");
        if (err == 0)
            atomic_store(&cancel__worker_running_flag, 1);
    }
    pthread_mutex_unlock(&start_mu);
    return err;
}

int cancel__watch_add(struct cancel__watch *w)
{
    int err = cancel__worker_ensure();
    if (err)
        return err;
    pthread_mutex_lock(&watch_mu);
    if (atomic_load(&poller) < 0) {
        /* The wake-up descriptor is made once and kept for the life of the
         * process (kickers use it without a lock); the poller comes and
         * goes with the thread. */
        int pw = atomic_load(&poller_wake);
        bool new_pw = pw < 0;
        if (new_pw)
            pw = cancel__eventfd_open();
        int p = pw >= 0 ? cancel__poller_open() : pw;
        if (p < 0 || (err = cancel__poller_add(p, pw, &poller_wake_key)) != 0) {
            if (!err)
                err = -p;
            if (p >= 0)
                cancel__fd_close(p);
            if (new_pw && pw >= 0)
                cancel__fd_close(pw);
            pthread_mutex_unlock(&watch_mu);
            return err;
        }
        /* seq_cst: a kicker that bumps wake_seq after the thread's re-check
         * in sleep_or_serve reads these as set, and signals poller_wake. */
        atomic_store(&poller_wake, pw);
        atomic_store(&poller, p);
    }
    err = cancel__poller_add(atomic_load(&poller), w->fd, w);
    if (err == 0) {
        w->next = watches;
        watches = w;
        nwatches++;
    }
    pthread_mutex_unlock(&watch_mu);
    if (err == 0)
        cancel__worker_filed(true); /* the thread may sleep on the futex */
    return err;
}

bool cancel__watch_remove(struct cancel__watch *w)
{
    pthread_mutex_lock(&watch_mu);
    struct cancel__watch **pp = &watches;
    while (*pp && *pp != w)
        pp = &(*pp)->next;
    bool found = *pp != NULL;
    if (found) {
        cancel__poller_del(atomic_load(&poller), w->fd);
        *pp = w->next;
        nwatches--;
    }
    /* Its handler runs on the library thread: wait for it to return,
     * unless we are that thread (called from a handler). */
    if (atomic_load_explicit(&thread_self, memory_order_relaxed) != cancel__self())
        while (serving == w)
            pthread_cond_wait(&served, &watch_mu);
    pthread_mutex_unlock(&watch_mu);
    return found;
}

/* Under start_mu, with the thread running: waits until it has run what was
 * queued before the call. 0 or ETIMEDOUT. */
static int barrier_wait(int64_t deadline)
{
    /* release: what the caller did before (posting, typically) is visible
     * to the thread that reads the request with acquire. */
    uint32_t target = atomic_fetch_add_explicit(&barrier_req, 1, memory_order_release) + 1;
    cancel__worker_kick();
    for (;;) {
        /* acquire: pairs with the thread's release store. */
        uint32_t done = atomic_load_explicit(&barrier_done, memory_order_acquire);
        if ((int32_t)(done - target) >= 0)
            return 0;
        if (cancel__futex_wait(&barrier_done, done, deadline) == ETIMEDOUT)
            return ETIMEDOUT;
    }
}

void cancel__worker_drain(void)
{
    if (on_library_thread())
        return;
    pthread_mutex_lock(&start_mu);
    bool running = atomic_load(&cancel__worker_running_flag);
    if (running)
        (void)barrier_wait(-1);
    pthread_mutex_unlock(&start_mu);
    if (!running)
        drain_queue(); /* user callbacks: never under start_mu */
}

static int quiesce(int64_t timeout_ns, bool force)
{
    if (on_library_thread())
        return EDEADLK; /* from a callback on the library thread itself */
    int64_t deadline = timeout_ns == CANCEL_INFINITE ? -1 : cancel__add_sat(cancel__clock_ns(), timeout_ns);
    pthread_mutex_lock(&start_mu);
    if (!atomic_load(&cancel__worker_running_flag)) {
        pthread_mutex_unlock(&start_mu);
        /* No thread: run what waits for one here (user callbacks: never
         * under start_mu, which they may need). */
        drain_queue();
        return cancel__timer_pending() || cancel__watch_count() ? EBUSY : 0;
    }
    int err = barrier_wait(deadline);
    bool stopped = false;
    if (err == 0) {
        /* From here on, callbacks the thread still runs see `running`
         * cleared; cancel__worker_ensure lets them through (they are on the
         * thread), and what they file makes the thread refuse. */
        atomic_store(&cancel__worker_running_flag, 0);
        atomic_store(&stop_result, RESULT_NONE);
        int asked = force ? STOP_FORCED : STOP_ASKED;
        atomic_store(&stop_req, asked);
        cancel__worker_kick();
        uint32_t r;
        bool claimed = false;
        while ((r = atomic_load(&stop_result)) == RESULT_NONE) {
            /* Out of time and the thread has not claimed the request yet
             * (it runs a callback queued meanwhile): withdraw it. Once it
             * has claimed it, its answer comes without running anything. */
            int64_t until = claimed ? -1 : deadline;
            if (!claimed && deadline >= 0 && cancel__clock_ns() >= deadline) {
                int expected = asked;
                if (atomic_compare_exchange_strong(&stop_req, &expected, STOP_NONE))
                    break;
                claimed = true; /* it took it: its answer is on the way */
                until = -1;
            }
            cancel__futex_wait(&stop_result, RESULT_NONE, until);
        }
        if (r == RESULT_STOPPED) {
            if (cancel__thread_join(thread, deadline) == 0) {
                stopped = true;
                /* No watch left (or forced): the poller goes too. Its wake-up
                 * descriptor stays: a kicker may be about to write to it, and
                 * a number closed and reused would take its bytes. */
                pthread_mutex_lock(&watch_mu);
                if (!watches) {
                    int p = atomic_exchange(&poller, -1);
                    if (p >= 0)
                        cancel__fd_close(p);
                }
                pthread_mutex_unlock(&watch_mu);
            } else {
                /* Stopped, still returning: let it go by itself. */
                pthread_detach(thread);
                err = ETIMEDOUT;
            }
        } else {
            /* Refused (EBUSY), or withdrawn in time: it goes on. */
            atomic_store(&cancel__worker_running_flag, 1);
            err = r == RESULT_REFUSED ? EBUSY : ETIMEDOUT;
        }
    }
    pthread_mutex_unlock(&start_mu);
    if (stopped)
        drain_queue(); /* a post that raced the stop; never under start_mu */
    return err;
}

int cancel_quiesce(int64_t timeout_ns)
{
    if (timeout_ns < 0 && timeout_ns != CANCEL_INFINITE)
        return EINVAL;
    return quiesce(timeout_ns, false);
}

/* When the library is unloaded (dlclose) or the process exits: stop the
 * thread even with deadlines armed, since nothing could serve them any more,
 * so that no code of ours runs once it is unmapped. A thread stuck in a
 * callback for more than a second is left behind. */
__attribute__((destructor)) static void library_unload(void)
{
    if (atomic_load(&cancel__worker_running_flag))
        (void)quiesce(1000000000, true);
}
