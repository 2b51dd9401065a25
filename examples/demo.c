/*
 * cancel_demo: one owner, four workers, four ways of listening.
 *
 *   cancel_demo            the job stops on its 1-second deadline
 *   cancel_demo --fail     a worker fails after 0.3 s; the others stop with its cause
 *   Ctrl+C                 stops everything at once, with reason "signal"
 *
 * The owner creates a root source (cancelled by Ctrl+C) and a job source
 * linked to it with a deadline, then hands the job's token to each worker.
 * Every worker notices the cancellation in its own way, stops, and says why.
 */
#include <cancel.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MS 1000000LL

static int64_t start_ns;
static double elapsed(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - start_ns) / 1e9;
}

static void report(const char *who, cancel_token tok, const char *what)
{
    cancel_cause c = cancel_token_cause(tok);
    char why[160];
    int n = snprintf(why, sizeof why, "%s", cancel_reason_name(c.reason));
    if (c.reason == CANCEL_REASON_FAILED)
        n += snprintf(why + n, sizeof why - (size_t)n, " (%s: %s)", strerror(c.code),
                      c.message ? c.message : "");
    if (c.reason == CANCEL_REASON_SIGNAL)
        n += snprintf(why + n, sizeof why - (size_t)n, " (%s)", strsignal(c.code));
    if (c.origin)
        snprintf(why + n, sizeof why - (size_t)n, ", started at \"%s\"", c.origin);
    printf("%6.3f s  %-8s stopped: %s; cause: %s\n", elapsed(), who, what, why);
}

/* 1. A hot loop: one inlined load per iteration. */
static void *counter(void *arg)
{
    cancel_token tok = *(cancel_token *)arg;
    unsigned long long iterations = 0, work = 0;
    while (!cancel_token_is_requested(tok)) {
        work += iterations * 2654435761u; /* stand-in for real work */
        iterations++;
    }
    if (work == 1)
        puts("unlikely");
    char what[64];
    snprintf(what, sizeof what, "%llu loop iterations", iterations);
    report("counter", tok, what);
    return NULL;
}

/* 2. Periodic work with an interruptible sleep between steps. */
static void *sleeper(void *arg)
{
    cancel_token tok = *(cancel_token *)arg;
    int steps = 0;
    while (!cancel_token_wait(tok, 100 * MS)) /* sleeps 100 ms unless cancelled */
        steps++;
    char what[64];
    snprintf(what, sizeof what, "%d steps of 100 ms", steps);
    report("sleeper", tok, what);
    return NULL;
}

/* 3. An event loop: the token's descriptor polled beside an idle pipe. */
static void *poller(void *arg)
{
    cancel_token tok = *(cancel_token *)arg;
    int pipefd[2];
    if (pipe(pipefd) != 0)
        return NULL;
    struct pollfd fds[2] = {{pipefd[0], POLLIN, 0}, {cancel_token_fd(tok), POLLIN, 0}};
    int wakeups = 0;
    while (poll(fds, 2, -1) > 0 && !(fds[1].revents & POLLIN))
        wakeups++;
    char what[64];
    snprintf(what, sizeof what, "poll() woke on the token's descriptor");
    report("poller", tok, what);
    close(pipefd[0]);
    close(pipefd[1]);
    return NULL;
}

/* 4. A blocking wait on the worker's own condition variable, interrupted by
 *    a cancellation callback. */
struct waiter_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
};
static void wake_waiter(void *arg)
{
    struct waiter_state *w = arg;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}
static void *waiter(void *arg)
{
    cancel_token tok = *(cancel_token *)arg;
    struct waiter_state w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    cancel_registration reg;
    cancel_register(tok, &reg, wake_waiter, &w); /* runs at once if already cancelled */
    pthread_mutex_lock(&w.mu);
    while (!w.stop)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    cancel_unregister(&reg); /* after this, `w` may go out of scope */
    report("waiter", tok, "a callback woke its condition variable");
    return NULL;
}

/* With --fail: a worker that hits an error and fails the job for everyone.
 * The owner delegated that right by handing it the source itself. */
static void *checker(void *arg)
{
    cancel_source *job = arg;
    if (!cancel_token_wait(cancel_source_token(job), 300 * MS))
        cancel_source_fail(job, EIO, "checksum mismatch in block 42");
    return NULL;
}

static cancel_source *root;
static void on_signal(int signo)
{
    cancel_source_cancel_signal(root, signo); /* async-signal-safe */
}

int main(int argc, char **argv)
{
    int fail = argc > 1 && strcmp(argv[1], "--fail") == 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    start_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;

    root = cancel_source_new();
    cancel_source_set_name(root, "main");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    cancel_token parent = cancel_source_token(root);
    cancel_source *job = cancel_source_new_linked(&parent, 1);
    cancel_source_set_name(job, "job");
    cancel_source_cancel_after(job, 1000 * MS);
    cancel_token tok = cancel_source_token(job);

    printf("4 workers share one token; the job has a 1 s deadline%s. Ctrl+C stops it early.\n",
           fail ? " and a worker will fail at 0.3 s" : "");
    void *(*workers[])(void *) = {counter, sleeper, poller, waiter};
    pthread_t threads[5];
    for (int i = 0; i < 4; i++)
        pthread_create(&threads[i], NULL, workers[i], &tok);
    if (fail)
        pthread_create(&threads[4], NULL, checker, job);

    cancel_token_wait(tok, CANCEL_INFINITE);
    for (int i = 0; i < 4 + fail; i++)
        pthread_join(threads[i], NULL);

    cancel_cause c = cancel_token_cause(tok);
    printf("all workers stopped; the job ended by %s\n", cancel_reason_name(c.reason));
    cancel_source_free(job);
    cancel_source_free(root);
    return c.reason == CANCEL_REASON_SIGNAL ? 128 + c.code : 0;
}
