/*
 * Process-wide figures.
 */
#include "dispatch.h"
#include "timer.h"
#include "worker.h"

int cancel_get_stats(cancel_stats *out)
{
    if (!out)
        return EINVAL;
    out->deadlines_pending = cancel__timer_pending();
    out->thread_running = cancel__worker_running();
    out->slow_callbacks = cancel__slow_callbacks();
    out->watched_fds = cancel__watch_count();
    return 0;
}
