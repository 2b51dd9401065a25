/*
 * process_bench: <cancel/process.h> beside the raw mechanism, same run.
 *
 *  - cancel-to-return latency: a thread blocked in cancel_process_wait on a
 *    running `sleep`; the main thread cancels the process's token and the
 *    clock stops when the wait returns with the child killed and reaped.
 *    Baseline: the same child, a thread blocked in poll on its pidfd, the
 *    main thread calls kill(pid, SIGTERM), the clock stops after the
 *    waiter's waitpid. Most of either is the kernel tearing the child down.
 *  - spawn + wait of `true`, nothing cancelled: cancel_process_spawn +
 *    cancel_process_wait + cancel_process_free beside posix_spawnp +
 *    waitpid.
 *
 * The two kinds alternate sample by sample so that load elsewhere hits both;
 * on a shared machine trust the ratios more than the absolute times.
 *
 *   process_bench [samples / 2]      (default 200: 400 samples of each kind)
 */
#define _GNU_SOURCE
#include <cancel.h>
#include <cancel/process.h>

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "latency.h"

extern char **environ;

static void die(const char *what, int err)
{
    fprintf(stderr, "process_bench: %s: %s\n", what, strerror(err));
    exit(1);
}

static int samples = 200;
static char *sleep_argv[] = {"sleep", "1000", NULL};
static char *true_argv[] = {"true", NULL};

/* ---- cancel-to-return latency ---- */

enum { K_OURS, K_OURS_TOKEN, K_OURS_NO_GRACE, K_RAW };
struct lat_case {
    int kind;
    cancel_process *p;
    cancel_token wait_tok;
    pid_t pid;
    int pidfd;
    _Atomic int ready;
    int64_t woke_at;
};

static void *lat_waiter(void *arg)
{
    struct lat_case *l = arg;
    atomic_store(&l->ready, 1);
    if (l->kind == K_RAW) {
        struct pollfd p = {l->pidfd, POLLIN, 0};
        while (poll(&p, 1, -1) != 1) {
        }
        if (waitpid(l->pid, NULL, WNOHANG) != l->pid)
            die("waitpid", ECHILD);
    } else {
        int st, err = cancel_process_wait(l->wait_tok, l->p, CANCEL_INFINITE, &st);
        if (err || !WIFSIGNALED(st))
            die("cancel_process_wait", err ? err : EINVAL);
    }
    l->woke_at = lat_now();
    return NULL;
}

/* One sample: the cancel-to-return latency in microseconds. */
static void latency_sample(int kind, cancel_source *waiter_src, double *out)
{
    struct lat_case l = {.kind = kind, .pidfd = -1};
    cancel_source *s = cancel_source_new();
    int err;
    if (kind == K_RAW) {
        err = posix_spawnp(&l.pid, "sleep", NULL, NULL, sleep_argv, environ);
        if (err)
            die("posix_spawnp", err);
        l.pidfd = (int)syscall(SYS_pidfd_open, l.pid, 0);
        if (l.pidfd < 0)
            die("pidfd_open", errno);
    } else {
        cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
        if (kind == K_OURS_NO_GRACE)
            o.grace_ns = CANCEL_INFINITE; /* no grace timer to arm */
        err = cancel_process_spawn(cancel_source_token(s), "sleep", sleep_argv, &o, &l.p);
        if (err)
            die("cancel_process_spawn", err);
        l.wait_tok = kind == K_OURS_TOKEN ? cancel_source_token(waiter_src) : CANCEL_TOKEN_NONE;
    }
    pthread_t th;
    pthread_create(&th, NULL, lat_waiter, &l);
    while (!atomic_load(&l.ready))
        sched_yield();
    struct timespec pause = {0, 1000000}; /* let it block */
    nanosleep(&pause, NULL);
    int64_t t0 = lat_now();
    if (kind == K_RAW)
        kill(l.pid, SIGTERM);
    else
        cancel_source_cancel(s);
    pthread_join(th, NULL);
    *out = (double)(l.woke_at - t0) / 1000.0;
    if (kind == K_RAW)
        close(l.pidfd);
    else
        cancel_process_free(l.p);
    cancel_source_free(s);
}

static void latency_row(const char *what, int kind, const char *base_name, int base_kind)
{
    size_t n = 2 * (size_t)samples;
    double *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    cancel_source *waiter_src = cancel_source_new(); /* the waiter's own token, never cancelled */
    /* alternate sample by sample, in both orders, so that bursts of load
     * elsewhere on the machine hit both kinds alike */
    for (size_t i = 0; i < n; i++) {
        if (i % 2) {
            latency_sample(kind, waiter_src, &x[i]);
            latency_sample(base_kind, waiter_src, &y[i]);
        } else {
            latency_sample(base_kind, waiter_src, &y[i]);
            latency_sample(kind, waiter_src, &x[i]);
        }
    }
    cancel_source_free(waiter_src);
    double p50a = lat_percentile(x, (int)n, 0.5), p99a = lat_percentile(x, (int)n, 0.99);
    double p50b = lat_percentile(y, (int)n, 0.5), p99b = lat_percentile(y, (int)n, 0.99);
    printf("%-44s %7.1f/%7.1f   %-28s %7.1f/%7.1f   %5.2fx\n", what, p50a, p99a, base_name, p50b, p99b,
           p50a / p50b);
    fflush(stdout);
    free(x);
    free(y);
}

/* ---- spawn + wait, uncancelled ---- */

static double spawn_wait(bool ours)
{
    cancel_source *s = cancel_source_new();
    int64_t t0 = lat_now();
    for (int i = 0; i < samples; i++) {
        int st, err;
        if (ours) {
            cancel_process *p;
            err = cancel_process_spawn(cancel_source_token(s), "true", true_argv, NULL, &p);
            if (!err)
                err = cancel_process_wait(cancel_source_token(s), p, CANCEL_INFINITE, &st);
            cancel_process_free(p);
        } else {
            pid_t pid;
            err = posix_spawnp(&pid, "true", NULL, NULL, true_argv, environ);
            if (!err && waitpid(pid, &st, 0) != pid)
                err = errno;
        }
        if (err)
            die("spawn + wait", err);
    }
    int64_t t1 = lat_now();
    cancel_source_free(s);
    return (double)(t1 - t0) / samples / 1000.0;
}

static void spawn_row(void)
{
    enum { ROUNDS = 6 };
    double a[ROUNDS], b[ROUNDS];
    for (int i = 0; i < ROUNDS; i++) {
        a[i] = spawn_wait(true);
        b[i] = spawn_wait(false);
    }
    double ma = lat_percentile(a, ROUNDS, 0.5), mb = lat_percentile(b, ROUNDS, 0.5);
    printf("%-44s %15.1f   %-28s %15.1f   %5.2fx\n", "spawn + wait + free `true`, per process", ma,
           "posix_spawnp + waitpid", mb, ma / mb);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        samples = atoi(argv[1]);
    if (samples < 10)
        samples = 200;
    printf("libcancel %d.%d.%d process benchmark: %d samples per kind, alternating\n", CANCEL_VERSION_MAJOR,
           CANCEL_VERSION_MINOR, CANCEL_VERSION_PATCH, 2 * samples);
    printf("%-44s %15s   %-28s %15s   %6s\n", "cancel-to-return latency", "p50/p99 us", "baseline (same run)",
           "p50/p99 us", "p50");
    latency_row("blocked in cancel_process_wait", K_OURS, "kill + poll(pidfd) + waitpid", K_RAW);
    latency_row("same, the waiter listening to its own token", K_OURS_TOKEN, "kill + poll(pidfd) + waitpid",
                K_RAW);
    latency_row("same, no grace (no timer armed)", K_OURS_NO_GRACE, "kill + poll(pidfd) + waitpid", K_RAW);
    printf("%-44s %15s   %-28s %15s   %6s\n", "uncancelled", "us/op", "baseline (same run)", "us/op", "ratio");
    spawn_row();
    return 0;
}
