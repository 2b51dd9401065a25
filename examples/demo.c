/*
 * cancel_demo: six workers in one group, each listening to its token in its
 * own way. A deadline, a failing worker or Ctrl+C cancels the group; a live
 * view shows them stop; the report says who got the request, how fast each
 * answered, and who ignored it.
 *
 *   cancel_demo                      the group is cancelled by its 2 s deadline
 *   cancel_demo --timeout 0.5        by a shorter one
 *   cancel_demo --fail reader        a worker fails half-way: its siblings stop with its cause
 *   cancel_demo --json | python3 -m json.tool      the report as JSON (the live view on stderr)
 *   cancel_demo --child              one more worker: a separate process running libcancel, stopped
 *                                    by the same token, across the process boundary, with its cause
 *   Ctrl+C                           stops everything at once; a second Ctrl+C quits at once
 *
 * Read it top to bottom: the workers, then main.
 */
#include <cancel.h>
#include <cancel/io.h>      /* cancel_sleep, cancel_io_read */
#include <cancel/process.h> /* a child process tied to a token */
#include <cancel/signal.h>  /* Ctrl+C cancels a source */
#include <cancel/sync.h>    /* a queue between two workers */
#include <cancel/task.h>    /* the pool, the group, the report */

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MS (1000 * 1000LL)
#define GRACE_MS 100 /* a worker still running this long after the request is a straggler */

/* --fail NAME: the main thread makes that worker fail half-way, through
 * whatever the worker is waiting for. */
static _Atomic int failing = -1; /* the index of the worker told to fail */
static bool told_to_fail(int me)
{
    return atomic_load(&failing) == me;
}

/* ---- The workers. Each is a task: it gets a token and returns 0, an
 * error (a failure: the group cancels its siblings), or ECANCELED when it
 * stopped because its token was cancelled. ---- */

/* 1. A CPU loop that checks its token on every round: one load. */
enum { CRUNCH, READER, SLEEPER, CONSUMER, CHILD, STUBBORN, REMOTE, WORKERS };
static int crunch(void *arg, cancel_token tok)
{
    (void)arg;
    volatile unsigned long x = 1;
    while (!cancel_token_is_requested(tok)) {
        for (int i = 0; i < 10000; i++)
            x = x * 6364136223846793005u + 1442695040888963407u; /* stand-in for real work */
        if (told_to_fail(CRUNCH))
            return EDOM; /* "the numbers went wrong" */
    }
    return ECANCELED;
}

/* 2. A reader blocked on a pipe that nobody writes to (unless told to fail). */
static int pipe_fds[2];
static int reader(void *arg, cancel_token tok)
{
    (void)arg;
    char c;
    ssize_t n = cancel_io_read(tok, pipe_fds[0], &c, 1); /* wakes up on cancellation */
    if (n < 0)
        return errno; /* ECANCELED */
    return EIO;       /* a byte came: "corrupt input" */
}

/* 3. Periodic work between interruptible sleeps: every 100 ms it hands an
 *    item to the consumer through a queue. */
static cancel_queue *mailbox;
static int sleeper(void *arg, cancel_token tok)
{
    (void)arg;
    int err;
    static int item;
    while ((err = cancel_sleep(tok, 100 * MS)) == 0) {
        if (told_to_fail(SLEEPER))
            return ETIMEDOUT; /* "the upstream stopped answering" */
        if ((err = cancel_queue_push(tok, mailbox, &item, CANCEL_INFINITE)) != 0)
            break;
    }
    return err; /* ECANCELED */
}

/* 4. A consumer blocked popping a queue. */
static int poison; /* the item that makes it fail */
static int consumer(void *arg, cancel_token tok)
{
    (void)arg;
    void *item;
    int err;
    while ((err = cancel_queue_pop(tok, mailbox, &item, CANCEL_INFINITE)) == 0)
        if (item == &poison)
            return EBADMSG; /* "a message it cannot read" */
    return err; /* ECANCELED */
}

/* 5. A child process, `sleep 60`, tied to the token: cancelling it sends
 *    the child SIGTERM. */
static cancel_process *_Atomic child_process;
static int child(void *arg, cancel_token tok)
{
    (void)arg;
    char *argv[] = {"sleep", "60", NULL};
    cancel_process *p;
    int err = cancel_process_spawn(tok, "sleep", argv, NULL, &p);
    if (err)
        return err;
    atomic_store(&child_process, p);
    int status = 0;
    err = cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &status); /* until it ends */
    atomic_store(&child_process, NULL);
    cancel_process_free(p);
    if (err)
        return err;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM && cancel_token_is_requested(tok))
        return ECANCELED; /* stopped because we were cancelled */
    return ECHILD;        /* "the child died on its own" */
}

/* 6. A worker that ignores its token for a while, burning CPU: the report
 *    names it a straggler, and a hog. Real code does this by accident. */
static int stubborn(void *arg, cancel_token tok)
{
    (void)arg;
    struct timespec t;
    for (int64_t asked = 0;;) {
        volatile unsigned long x = 1;
        for (int i = 0; i < 200000; i++)
            x = x * 6364136223846793005u + 1; /* a few ms of CPU, deaf to everything */
        if (told_to_fail(STUBBORN))
            return ENOSPC;
        if (cancel_token_is_requested(tok)) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            int64_t now = (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
            if (!asked)
                asked = now;
            else if (now - asked > 600 * MS)
                return ECANCELED; /* gives in at last, 0.6 s late */
        }
    }
}

/* 7. (--child) A worker that is a separate process running libcancel: this
 *    very program, started with --remote-worker and sharing the task's token
 *    (share_token). There it becomes a source of its own
 *    (cancel_source_new_inherited), cancelled when ours is, with our cause:
 *    the request crosses the process boundary. */
static cancel_process *_Atomic remote_process;
/* Whether our token is cancelled, once the child stopped by itself. The
 * child carries our deadline (the same absolute time), so its library thread
 * may act on it a moment before ours does: a deadline that has passed is
 * our request too, and our token reads cancelled as soon as our library
 * thread catches up. */
static bool cancelled_or_due(cancel_token tok)
{
    int64_t d = cancel_token_deadline(tok);
    if (d != CANCEL_INFINITE && cancel_now() >= d)
        return cancel_token_wait(tok, 1000 * MS); /* due: it fires at once */
    return cancel_token_is_requested(tok);
}
static int remote(void *arg, cancel_token tok)
{
    (void)arg;
    char *argv[] = {"cancel_demo", "--remote-worker", NULL};
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.share_token = true;     /* the child listens to this very token */
    o.term_signal = SIGCONT;  /* so no SIGTERM races the token: harmless... */
    o.grace_ns = 2000 * MS;   /* ...and SIGKILL only if it ignored both for 2 s */
    cancel_process *p;
    int err = cancel_process_spawn(tok, "/proc/self/exe", argv, &o, &p);
    if (err)
        return err;
    atomic_store(&remote_process, p);
    int status = 0;
    err = cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &status);
    atomic_store(&remote_process, NULL);
    cancel_process_free(p);
    if (err)
        return err;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && cancelled_or_due(tok))
        return ECANCELED; /* it stopped by itself, on our request */
    return ECHILD;
}

/* The other side: main() runs this in the child process. */
static int remote_worker(void)
{
    cancel_source *s = cancel_source_new_inherited(); /* the parent's token, here */
    if (!s) {
        perror("cancel_demo --remote-worker");
        return 1;
    }
    cancel_token tok = cancel_source_token(s);
    unsigned long rounds = 0;
    while (cancel_sleep(tok, 10 * MS) == 0) /* a stand-in for the process's own work */
        rounds++;
    cancel_cause c = cancel_token_cause(tok);
    fprintf(stderr, "           remote worker, pid %d: stopped after %lu rounds, cause: %s%s%s (origin \"%s\")\n",
            (int)getpid(), rounds, cancel_reason_name(c.reason), c.message ? ": " : "",
            c.message ? c.message : "", c.origin ? c.origin : "?");
    cancel_source_free(s);
    return 0;
}

static const struct {
    const char *name;
    cancel_task_fn *fn;
} workers[WORKERS] = {
    [CRUNCH] = {"crunch", crunch},       [READER] = {"reader", reader},   [SLEEPER] = {"sleeper", sleeper},
    [CONSUMER] = {"consumer", consumer}, [CHILD] = {"child", child},      [STUBBORN] = {"stubborn", stubborn},
    [REMOTE] = {"remote", remote},
};

/* Makes the worker told to fail notice: through what it waits for. */
static void make_it_fail(int w)
{
    atomic_store(&failing, w);
    if (w == READER)
        (void)!write(pipe_fds[1], "!", 1);
    if (w == CONSUMER)
        cancel_queue_push(CANCEL_TOKEN_NONE, mailbox, &poison, 0);
    cancel_process *p = atomic_load(&child_process);
    if (w == CHILD && p)
        cancel_process_signal(p, SIGKILL);
    p = atomic_load(&remote_process);
    if (w == REMOTE && p)
        cancel_process_signal(p, SIGKILL);
}

/* ---- main ---- */

static void usage(FILE *f)
{
    fprintf(f, "usage: cancel_demo [--timeout SECONDS] [--fail NAME] [--child] [--json] [--help]\n"
               "  --timeout SECONDS  the group's deadline (default 2)\n"
               "  --fail NAME        make one worker fail half-way: crunch, reader, sleeper,\n"
               "                     consumer, child, stubborn (or remote, with --child)\n"
               "  --child            one more worker, in a separate process running libcancel,\n"
               "                     stopped by the same token with the same cause\n"
               "  --json             print the report as JSON on stdout (the live view goes to stderr)\n"
               "  --help             this text\n"
               "Ctrl+C cancels everything at once; a second Ctrl+C quits at once.\n");
}

static double seconds_since(int64_t start)
{
    return (double)(cancel_now() - start) / 1e9;
}

int main(int argc, char **argv)
{
    double timeout = 2.0;
    bool json = false, remote_too = false;
    int fail = -1;
    static const struct option options[] = {{"timeout", required_argument, NULL, 't'},
                                            {"fail", required_argument, NULL, 'f'},
                                            {"child", no_argument, NULL, 'c'},
                                            {"json", no_argument, NULL, 'j'},
                                            {"help", no_argument, NULL, 'h'},
                                            {"remote-worker", no_argument, NULL, 'r'},
                                            {NULL, 0, NULL, 0}};
    for (int c; (c = getopt_long(argc, argv, "", options, NULL)) != -1;) {
        char *end = NULL;
        switch (c) {
        case 't':
            timeout = strtod(optarg, &end);
            if (end == optarg || *end || !(timeout > 0 && timeout < 1e6)) {
                fprintf(stderr, "cancel_demo: --timeout wants a number of seconds above 0\n");
                return 2;
            }
            break;
        case 'f':
            for (int w = 0; w < WORKERS; w++)
                if (strcmp(optarg, workers[w].name) == 0)
                    fail = w;
            if (fail < 0) {
                fprintf(stderr, "cancel_demo: no worker is named \"%s\"\n", optarg);
                usage(stderr);
                return 2;
            }
            break;
        case 'c':
            remote_too = true;
            break;
        case 'j':
            json = true;
            break;
        case 'r': /* not for people: how --child starts its process */
            return remote_worker();
        case 'h':
            usage(stdout);
            return 0;
        default: /* getopt_long said what was wrong */
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cancel_demo: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    int nworkers = remote_too ? WORKERS : REMOTE; /* the remote worker only with --child */
    if (fail == REMOTE && !remote_too) {
        fprintf(stderr, "cancel_demo: --fail remote needs --child\n");
        return 2;
    }

    /* The owner's side. Ctrl+C (or SIGTERM) cancels `root`, with reason
     * SIGNAL; `job` is root's child with a deadline of its own. */
    cancel_source *root = cancel_source_new_child(CANCEL_TOKEN_NONE, CANCEL_INFINITE, "Ctrl+C");
    int sigs[] = {SIGINT, SIGTERM};
    cancel_signal_watch *watch = NULL;
    if (cancel_signal_watch_new(root, sigs, 2, CANCEL_SIGNAL_FORCE_SECOND, &watch) != 0)
        fprintf(stderr, "cancel_demo: Ctrl+C will not be caught\n");
    cancel_source *job = cancel_source_new_child(cancel_source_token(root), (int64_t)(timeout * 1e9), "deadline");
    mailbox = cancel_queue_new(16);
    if (!root || !job || !mailbox || pipe(pipe_fds) != 0) {
        perror("cancel_demo");
        return 1;
    }
    cancel_set_slow_callback_threshold(1 * MS); /* count cancellation callbacks that stall */

    /* A pool with a thread per worker, and a group whose token is a child
     * of the job's: the deadline, Ctrl+C, or the first failing worker
     * cancels every worker. */
    cancel_pool *pool = cancel_pool_new((size_t)nworkers, "demo");
    cancel_group *group = cancel_group_new(pool, cancel_source_token(job), "demo");
    if (!pool || !group) {
        perror("cancel_demo");
        return 1;
    }
    cancel_group_set_grace(group, GRACE_MS * MS);
    int64_t start = cancel_now();
    for (int w = 0; w < nworkers; w++)
        cancel_group_spawn(group, workers[w].fn, NULL, workers[w].name);

    /* The live view: a status line redrawn in place on a terminal, plain
     * log lines otherwise. With --json it goes to stderr. */
    FILE *view = json ? stderr : stdout;
    bool tty = isatty(fileno(view));
    fprintf(view, "%7.3f s  %d workers started; deadline in %g s%s%s\n", 0.0, nworkers, timeout,
            fail >= 0 ? "; failing half-way: " : "", fail >= 0 ? workers[fail].name : "");
    size_t stopped_before = 0, stragglers_before = 0;
    bool told = false, said_cancel = false;
    for (;;) {
        cancel_group_stats st;
        cancel_group_stats_get(group, &st);
        size_t stopped = st.completed + st.canceled + st.failed;
        cancel_token gt = cancel_group_token(group);
        bool cancelled = cancel_token_is_requested(gt);
        if (tty) {
            fprintf(view, "\r\033[K%7.3f s  %-9s  pending %zu  running %zu  stopped %zu  stragglers %zu",
                    seconds_since(start), cancelled ? "cancelled" : "working", st.pending, st.running, stopped,
                    st.stragglers);
        } else {
            if (cancelled && !said_cancel) {
                cancel_cause c = cancel_token_cause(gt);
                fprintf(view, "%7.3f s  cancelled: %s%s%s (origin \"%s\")\n", seconds_since(start),
                        cancel_reason_name(c.reason), c.message ? ": " : "", c.message ? c.message : "",
                        c.origin ? c.origin : "?");
                said_cancel = true;
            }
            if (stopped != stopped_before)
                fprintf(view, "%7.3f s  %zu of %d workers stopped\n", seconds_since(start), stopped, nworkers);
            if (st.stragglers > stragglers_before)
                fprintf(view, "%7.3f s  %zu straggler%s: running %d ms after the request\n", seconds_since(start),
                        st.stragglers, st.stragglers == 1 ? "" : "s", GRACE_MS);
        }
        fflush(view);
        stopped_before = stopped;
        stragglers_before = st.stragglers;
        if (st.pending + st.running == 0)
            break;
        if (fail >= 0 && !told && seconds_since(start) >= timeout / 2) {
            make_it_fail(fail);
            told = true;
        }
        cancel_sleep(CANCEL_TOKEN_NONE, 20 * MS); /* a 20 ms pause that nothing cancels */
    }
    if (tty)
        fprintf(view, "\n");

    /* Every worker has returned: the wait returns at once, with the first
     * failure's error, or ECANCELED. Then the report. */
    int result = cancel_group_wait(group);
    cancel_cause why = cancel_token_cause(cancel_group_token(group));
    if (!json)
        printf("\n");
    cancel_group_report(group, stdout, json ? CANCEL_REPORT_JSON : CANCEL_REPORT_TEXT);
    if (!json)
        printf("\ncancel_group_wait: %s; the group was cancelled by %s\n",
               result ? strerror(result) : "every worker completed", cancel_reason_name(why.reason));

    cancel_group_free(group);
    cancel_pool_free(pool);
    cancel_source_free(job);
    cancel_signal_watch_free(watch);
    cancel_source_free(root);
    cancel_queue_free(mailbox);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    if (why.reason == CANCEL_REASON_SIGNAL)
        return 128 + why.code;
    return why.reason == CANCEL_REASON_FAILED ? 1 : 0;
}
