/*
 * The library thread (worker.c): one per process, started on first need. It
 * dispatches the callbacks of sources cancelled asynchronously or by a
 * deadline, fires deadlines, and runs the handlers of watched descriptors.
 */
#ifndef CANCEL_CORE_WORKER_H
#define CANCEL_CORE_WORKER_H

#include "source.h"

/* Set once a callback, deadline or watch may exist; set while the thread
 * runs. seq_cst: see the Dekker pair in request.c and the stop protocol in
 * worker.c. */
extern CANCEL_HIDDEN _Atomic int cancel__worker_wanted_flag, cancel__worker_running_flag;
static inline bool cancel__worker_wanted(void)
{
    return atomic_load(&cancel__worker_wanted_flag);
}
static inline bool cancel__worker_running(void)
{
    return atomic_load(&cancel__worker_running_flag);
}

/* Marks the thread wanted and starts it if it is not running. 0 or an errno
 * (the error of pthread_create; the next call tries again). */
CANCEL_HIDDEN int cancel__worker_ensure(void);
/* After filing something the thread must serve (a deadline, a watch): makes
 * sure a thread that was just stopped by cancel_quiesce is started again,
 * and wakes it. */
static inline void cancel__worker_filed(bool wake);
/* Queues a retained, marked source for dispatch on the library thread. AS-safe. */
CANCEL_HIDDEN void cancel__worker_post(struct cancel_source *s);
/* Returns once every source queued before the call was dispatched: waits
 * for the library thread, or dispatches on the caller if it does not run.
 * Does nothing when called on the library thread itself. */
CANCEL_HIDDEN void cancel__worker_drain(void);
/* Wakes the library thread to look at the queue, the timers and its
 * descriptors again. AS-safe. */
CANCEL_HIDDEN void cancel__worker_kick(void);

/* A descriptor the library thread watches: `ready` runs on the library
 * thread whenever fd is readable or hung up (level-triggered: it must
 * consume the event or remove the watch). */
struct cancel__watch {
    int fd;
    void (*ready)(struct cancel__watch *w);
    struct cancel__watch *next; /* private: under the watch list's mutex */
};
/* Starts watching. 0, or EMFILE/ENFILE/ENOMEM (the poller could not be made),
 * or the error of starting the thread. */
CANCEL_HIDDEN int cancel__watch_add(struct cancel__watch *w);
/* Descriptors watched now. */
CANCEL_HIDDEN size_t cancel__watch_count(void);
/* Stops watching. From another thread than the library thread, waits until
 * a handler of w that is running has returned (so the caller may then free
 * what it uses). True if w was watched. */
CANCEL_HIDDEN bool cancel__watch_remove(struct cancel__watch *w);

static inline void cancel__worker_filed(bool wake)
{
    if (cancel__unlikely(!cancel__worker_running())) {
        (void)cancel__worker_ensure(); /* on failure, the next filer tries again */
        wake = true;
    }
    if (wake)
        cancel__worker_kick();
}

#endif
