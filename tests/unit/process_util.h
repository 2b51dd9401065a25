/*
 * What the process tests share: pipes and lines, the children of this
 * process as /proc shows them, a waiter thread, and a helper mode of the test
 * program itself (run as `<test> helper <mode>`) for children whose
 * behaviour a shell cannot pin down exactly.
 */
#ifndef CANCEL_TEST_PROCESS_UTIL_H
#define CANCEL_TEST_PROCESS_UTIL_H

#include "../check.h"

#include "block/block.h"

#include <cancel.h>
#include <cancel/process.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEC INT64_C(1000000000)
#define MS INT64_C(1000000)

/* How long a test waits for something that must happen before it gives up
 * and fails: generous, since the machine may be slow; never reached when
 * things work. */
#define PATIENCE_MS 20000
#define PATIENT ((int64_t)PATIENCE_MS * MS) /* the same, as a timeout */

static inline void make_pipe(int p[2])
{
    CHECK(pipe2(p, O_CLOEXEC) == 0);
}

/* Reads one line (without its newline) from fd into buf; fails the test if
 * none comes within PATIENCE_MS. Returns false at end of file. */
static inline bool read_line(int fd, char *buf, size_t size)
{
    size_t n = 0;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, PATIENCE_MS);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r == 1);
        char c;
        ssize_t k = read(fd, &c, 1);
        if (k < 0 && errno == EINTR)
            continue;
        CHECK(k >= 0);
        if (k == 0) {
            buf[n] = 0;
            return n > 0;
        }
        if (c == '\n') {
            buf[n] = 0;
            return true;
        }
        CHECK(n + 1 < size);
        buf[n++] = c;
    }
}

/* /dev/null, for the output of children that print nothing we read: a
 * child left running by a failed check must not hold the test runner's
 * output open. */
static inline int quiet_fd(void)
{
    static int fd = -1;
    if (fd < 0)
        fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    return fd;
}

static inline void quiet_defaults(cancel_process_options *o)
{
    if (o->stdout_fd == -1)
        o->stdout_fd = quiet_fd();
    if (o->stderr_fd == -1)
        o->stderr_fd = quiet_fd();
}

/* Spawns /bin/sh -c script, with stdout to out_fd (-1: /dev/null), stdin
 * from in_fd (-1: inherit) and stderr to /dev/null. */
static inline cancel_process *spawn_sh(cancel_token tok, const char *script, int in_fd, int out_fd,
                                       const cancel_process_options *base)
{
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    if (base)
        o = *base;
    o.stdin_fd = in_fd;
    o.stdout_fd = out_fd;
    quiet_defaults(&o);
    char *argv[] = {"sh", "-c", (char *)script, NULL};
    cancel_process *p = NULL;
    CHECK_EQ(cancel_process_spawn(tok, "/bin/sh", argv, &o, &p), 0);
    CHECK(p != NULL);
    return p;
}

/* The children of this process: how many, and how many are zombies. */
static inline int count_children(int *zombies)
{
    pid_t me = getpid();
    int n = 0, z = 0;
    DIR *d = opendir("/proc");
    CHECK(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue; /* gone meanwhile */
        ssize_t k = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (k <= 0)
            continue;
        buf[k] = 0;
        char *rp = strrchr(buf, ')'); /* the command name may hold anything */
        char state;
        int ppid;
        if (!rp || sscanf(rp + 1, " %c %d", &state, &ppid) != 2)
            continue;
        if (ppid == me) {
            n++;
            if (state == 'Z')
                z++;
        }
    }
    closedir(d);
    if (zombies)
        *zombies = z;
    return n;
}

/* Waits (at most PATIENCE_MS) until this process has no child at all. */
static inline void wait_no_children(void)
{
    for (int i = 0; i < PATIENCE_MS; i++) {
        if (count_children(NULL) == 0)
            return;
        test_sleep_ns(MS);
    }
    int z, n = count_children(&z);
    fprintf(stderr, "children left behind: %d, of which zombies: %d\n", n, z);
    CHECK(!"children left behind");
}

/* The threads of this process named `name`. */
static inline int count_threads_named(const char *name)
{
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    CHECK(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], comm[64] = {0};
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue; /* gone meanwhile */
        ssize_t k = read(fd, comm, sizeof comm - 1);
        close(fd);
        if (k > 0 && comm[k - 1] == '\n')
            comm[k - 1] = 0;
        n += strcmp(comm, name) == 0;
    }
    closedir(d);
    return n;
}

/* Descriptors the library thread watches (freed children being reaped). */
static inline size_t watched(void)
{
    cancel_stats st;
    CHECK_EQ(cancel_get_stats(&st), 0);
    return st.watched_fds;
}

/* Waits (at most PATIENCE_MS) until no freed child is being reaped in the
 * background any more: the library thread watches nothing, and released
 * everything. No thread of the process layer exists at any time. */
static inline void wait_no_reaper(void)
{
    for (int i = 0; i < PATIENCE_MS && watched() > 0; i++)
        test_sleep_ns(MS);
    CHECK_EQ(watched(), 0);
    CHECK_EQ(count_threads_named("cancel-reaper"), 0);
}

/* ---- a thread blocked in cancel_process_wait ---- */
struct waiter {
    cancel_token tok;
    cancel_process *p;
    int64_t timeout;
    struct cancel__blocked *_Atomic blocked; /* its blocked-in word */
    int result;
    int status;
};

static inline void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    atomic_store(&w->blocked, cancel__blocked_here());
    w->status = -1;
    w->result = cancel_process_wait(w->tok, w->p, w->timeout, &w->status);
    return NULL;
}

/* Starts a waiter and returns once it is blocked in cancel_process_wait. */
static inline pthread_t start_waiter(struct waiter *w)
{
    atomic_store(&w->blocked, NULL);
    pthread_t t = test_spawn(waiter_main, w);
    for (int i = 0; i < PATIENCE_MS * 10; i++) {
        struct cancel__blocked *b = atomic_load(&w->blocked);
        const char *what = b ? atomic_load(&b->what) : NULL;
        if (what && strcmp(what, "cancel_process_wait") == 0)
            return t;
        test_sleep_ns(MS / 10);
    }
    CHECK(!"the waiter never blocked");
    return t;
}

/* ---- the helper mode ---- */

/* `<self> helper group`: forks a grandchild into the same process group,
 * which blocks SIGTERM and SIGRTMIN, prints "<its pid>", then waits for
 * either and prints its number: it reports which came first. The helper
 * itself then waits for a signal (stays) or exits at once with status 0
 * (`helper group exit`). */
static inline void helper_group(bool leave)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGRTMIN);
    pid_t g = fork();
    if (g < 0)
        _exit(2);
    if (g == 0) {
        sigprocmask(SIG_BLOCK, &set, NULL);
        char line[32];
        int n = snprintf(line, sizeof line, "%d\n", (int)getpid());
        if (write(1, line, (size_t)n) != n)
            _exit(3);
        int sig = sigwaitinfo(&set, NULL);
        n = snprintf(line, sizeof line, "%d\n", sig);
        if (write(1, line, (size_t)n) != n)
            _exit(3);
        _exit(0);
    }
    if (leave)
        _exit(0);
    for (;;)
        pause();
}

/* `<self> helper fds`: prints the numbers of its open descriptors on one
 * line, the one it reads them with excepted. */
static inline void helper_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        _exit(2);
    struct dirent *e;
    char line[1024];
    size_t n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
            continue;
        n += (size_t)snprintf(line + n, sizeof line - n, "%s ", e->d_name);
        if (n >= sizeof line)
            _exit(4);
    }
    line[n++] = '\n';
    if (write(1, line, n) != (ssize_t)n)
        _exit(3);
    _exit(0);
}

/* Call first in main: runs the helper mode when asked to. */
static inline void helper_dispatch(int argc, char **argv)
{
    if (argc < 3 || strcmp(argv[1], "helper") != 0)
        return;
    if (strcmp(argv[2], "group") == 0)
        helper_group(argc > 3 && strcmp(argv[3], "exit") == 0);
    if (strcmp(argv[2], "fds") == 0)
        helper_fds();
    _exit(1);
}

/* Spawns this very program in a helper mode. */
static inline cancel_process *spawn_helper(cancel_token tok, const char *mode, const char *arg, int out_fd,
                                           const cancel_process_options *base)
{
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    if (base)
        o = *base;
    o.stdout_fd = out_fd;
    quiet_defaults(&o);
    char *argv[] = {"helper", "helper", (char *)mode, (char *)arg, NULL};
    cancel_process *p = NULL;
    CHECK_EQ(cancel_process_spawn(tok, "/proc/self/exe", argv, &o, &p), 0);
    return p;
}

#endif
