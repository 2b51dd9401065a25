/*
 * The library thread: one per process, started on first need (the first
 * registration, linked source or deadline). It dispatches the callbacks of
 * sources cancelled by cancel_async or by a deadline, and sleeps on a futex
 * until the earliest deadline or a wake-up; it never polls.
 *
 * The queue of sources to dispatch is a lock-free stack threaded through
 * next_pending, pushed from any context (signal handlers included) and
 * emptied whole by the thread, so it has no ABA problem.
 */
#include "internal.h"
#include "lock.h"
#include "platform.h"

#include <pthread.h>

/* A callback or deadline may exist; the thread was started in this process.
 * seq_cst: see the Dekker pair in dispatch.c (cancel_async). */
_Atomic int cancel__worker_wanted_flag, cancel__worker_running_flag;
static _Atomic uint32_t wake_seq;
static _Atomic(struct cancel_source *) queue;
static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

void cancel__worker_kick(void)
{
    /* release: pairs with the acquire load at the top of the loop. */
    atomic_fetch_add_explicit(&wake_seq, 1, memory_order_release);
    cancel__futex_wake(&wake_seq, 1);
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

static void *worker_main(void *unused)
{
    (void)unused;
    for (;;) {
        uint32_t seq = atomic_load_explicit(&wake_seq, memory_order_acquire);

        /* acquire: pairs with the release CAS in cancel__worker_post. */
        struct cancel_source *q = atomic_exchange_explicit(&queue, NULL, memory_order_acquire);
        struct cancel_source *fifo = NULL;
        while (q) { /* oldest request first */
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

        int64_t next;
        struct cancel_source *due = cancel__timer_fire_due(&next);
        while (due) {
            struct cancel_source *n = due->next_pending;
            cancel__dispatch(due);
            due = n;
        }

        if (atomic_load_explicit(&queue, memory_order_relaxed))
            continue;
        if (!cancel__timer_clock_is_real())
            next = -1; /* a manual clock moves only with a poke */
        /* Returns at once if a post or an earlier deadline bumped wake_seq
         * since we read it. */
        cancel__futex_wait(&wake_seq, seq, next);
    }
    return NULL;
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&start_mu);
    cancel__graph_atfork_prepare();
    cancel__timer_atfork_prepare();
}

static void atfork_parent(void)
{
    cancel__timer_atfork_parent();
    cancel__graph_atfork_parent();
    pthread_mutex_unlock(&start_mu);
}

static void atfork_child(void)
{
    /* Only the forking thread exists in the child: the library thread is
     * gone and is started again on the next registration or deadline. */
    cancel__timer_atfork_child();
    cancel__graph_atfork_child();
    cancel__lock_atfork_child();
    atomic_store(&cancel__worker_running_flag, 0);
    atomic_store_explicit(&wake_seq, 0, memory_order_relaxed);
    pthread_mutex_unlock(&start_mu);
}

static void install_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

int cancel__worker_ensure(void)
{
    if (!atomic_load(&cancel__worker_wanted_flag))
        atomic_store(&cancel__worker_wanted_flag, 1); /* before `running`: see registration.c */
    if (atomic_load(&cancel__worker_running_flag))
        return 0;
    pthread_once(&atfork_once, install_atfork);
    /* From the first registration on, locks are in use: make their release
     * cheap (lock.h). */
    cancel__fence_setup();
    pthread_mutex_lock(&start_mu);
    int err = 0;
    if (!atomic_load(&cancel__worker_running_flag)) {
        err = cancel__thread_start(worker_main, NULL);
        if (err == 0)
            atomic_store(&cancel__worker_running_flag, 1);
    }
    pthread_mutex_unlock(&start_mu);
    return err;
}
