/*
 * Watching a descriptor on the library thread, as the public API offers it:
 * a thin layer over the library thread's own watches (worker.c), in storage
 * the caller provides.
 */
#include "worker.h"

#include <fcntl.h>

struct fd_watch {
    struct cancel__watch w; /* first: the library thread hands us back &w */
    cancel_fd_fn *fn;
    void *arg;
};
_Static_assert(sizeof(struct fd_watch) <= sizeof(cancel_fd_watch), "cancel_fd_watch storage");

static void ready(struct cancel__watch *w)
{
    struct fd_watch *f = (struct fd_watch *)(void *)w;
    f->fn((cancel_fd_watch *)(void *)f, f->arg);
}

int cancel_watch_fd(cancel_fd_watch *watch, int fd, cancel_fd_fn *fn, void *arg)
{
    if (!watch || !fn || fd < 0)
        return EINVAL;
    struct fd_watch *f = (struct fd_watch *)(void *)watch;
    f->w = (struct cancel__watch){fd, ready, NULL};
    f->fn = fn;
    f->arg = arg;
    return cancel__watch_add(&f->w);
}

bool cancel_unwatch_fd(cancel_fd_watch *watch)
{
    if (!watch) {
        errno = EINVAL;
        return false;
    }
    return cancel__watch_remove(&((struct fd_watch *)(void *)watch)->w);
}
