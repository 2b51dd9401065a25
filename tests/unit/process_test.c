/* <cancel/process.h>: spawning, waiting, options, errors, descriptors,
 * threads and fork. Cancellation and signals: process_kill_test.c. */
#include "process_util.h"
#include "seccomp_util.h"

#include <sys/resource.h>
#include <sys/stat.h>

static void exit_status_and_later_waits(void)
{
    cancel_process *p = spawn_sh(CANCEL_TOKEN_NONE, "exit 3", -1, -1, NULL);
    CHECK(cancel_process_pid(p) > 0);
    int st = -1;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 3);
    /* reaped once; every later wait says the same at once */
    st = -1;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, 0, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 3);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, NULL), 0);
    CHECK_EQ(count_children(NULL), 0);
    cancel_process_free(p);
}

static void path_search(void)
{
    char *t[] = {"true", NULL}, *f[] = {"false", NULL};
    cancel_process *p;
    int st;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", t, NULL, &p), 0);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cancel_process_free(p);
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "false", f, NULL, &p), 0);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    cancel_process_free(p);
}

static void cancelled_before_spawn(void)
{
    cancel_source *s = cancel_source_new();
    cancel_source_cancel(s);
    char *argv[] = {"true", NULL};
    cancel_process *p = (cancel_process *)&p;
    errno = 1234;
    CHECK_EQ(cancel_process_spawn(cancel_source_token(s), "true", argv, NULL, &p), ECANCELED);
    CHECK(p == NULL);
    /* ECANCELED wins over bad arguments */
    CHECK_EQ(cancel_process_spawn(cancel_source_token(s), NULL, NULL, NULL, NULL), ECANCELED);
    CHECK_EQ(errno, 1234);
    CHECK_EQ(count_children(NULL), 0);
    cancel_source_free(s);
}

static void spawn_errors(void)
{
    char *argv[] = {"x", NULL};
    cancel_process *p = (cancel_process *)&p;
    errno = 1234;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "no-such-program-anywhere", argv, NULL, &p), ENOENT);
    CHECK(p == NULL);
    CHECK_EQ(errno, 1234);
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "/no/such/file", argv, NULL, &p), ENOENT);

    /* not executable, and executable but of no format the kernel runs */
    char noexec[] = "/tmp/cancel-process-test-XXXXXX";
    int fd = mkstemp(noexec);
    CHECK(fd >= 0);
    CHECK(write(fd, "\x01\x02\x03garbage", 10) == 10);
    close(fd);
    CHECK(chmod(noexec, 0644) == 0);
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, noexec, argv, NULL, &p), EACCES);
    CHECK(chmod(noexec, 0755) == 0);
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, noexec, argv, NULL, &p), ENOEXEC);
    unlink(noexec);

    /* a working directory that does not exist, a descriptor that is closed */
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.cwd = "/no/such/directory";
    char *t[] = {"true", NULL};
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", t, &o, &p), ENOENT);
    o = (cancel_process_options)CANCEL_PROCESS_OPTIONS_INIT;
    int closed = open("/dev/null", O_RDONLY | O_CLOEXEC);
    close(closed);
    o.stdout_fd = closed;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", t, &o, &p), EBADF);
    CHECK(p == NULL);
    CHECK_EQ(count_children(NULL), 0); /* the failed children were reaped */
}

static void bad_input(void)
{
    char *argv[] = {"true", NULL};
    cancel_process *p = (cancel_process *)&p;
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", argv, NULL, NULL), EINVAL);
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, NULL, argv, NULL, &p), EINVAL);
    CHECK(p == NULL);
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", NULL, NULL, &p), EINVAL);
    o.term_signal = 0;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", argv, &o, &p), EINVAL);
    o.term_signal = NSIG;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", argv, &o, &p), EINVAL);
    o = (cancel_process_options)CANCEL_PROCESS_OPTIONS_INIT;
    o.grace_ns = -2;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", argv, &o, &p), EINVAL);
    o = (cancel_process_options)CANCEL_PROCESS_OPTIONS_INIT;
    o.stderr_fd = -2;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", argv, &o, &p), EINVAL);
    CHECK_EQ(count_children(NULL), 0);

    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, NULL, 0, NULL), EINVAL);
    CHECK_EQ(cancel_process_pid(NULL), -1);
    CHECK_EQ(cancel_process_signal(NULL, SIGTERM), EINVAL);
    cancel_process_free(NULL);

    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", argv, NULL, &p), 0);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, -2, NULL), EINVAL);
    CHECK_EQ(cancel_process_signal(p, -1), EINVAL);
    CHECK_EQ(cancel_process_signal(p, NSIG), EINVAL);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, NULL), 0);
    /* a wait token already cancelled wins over a bad process and an exited one */
    cancel_source *s = cancel_source_new();
    cancel_source_cancel(s);
    CHECK_EQ(cancel_process_wait(cancel_source_token(s), NULL, -2, NULL), ECANCELED);
    CHECK_EQ(cancel_process_wait(cancel_source_token(s), p, 0, NULL), ECANCELED);
    cancel_source_free(s);
    cancel_process_free(p);
}

static void redirection_cwd_env(void)
{
    int in[2], out[2], err[2];
    make_pipe(in);
    make_pipe(out);
    make_pipe(err);
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.stdin_fd = in[0];
    o.stdout_fd = out[1];
    o.stderr_fd = err[1];
    o.cwd = "/tmp";
    char *env[] = {"CANCEL_TEST_VAR=value", NULL}; /* no PATH: the caller's is searched */
    o.envp = env;
    char *argv[] = {"sh", "-c", "read x; echo \"$x $CANCEL_TEST_VAR $(pwd)\"; echo oops >&2", NULL};
    cancel_process *p;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "sh", argv, &o, &p), 0);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    CHECK(write(in[1], "hello\n", 6) == 6);
    close(in[1]);
    char line[256];
    CHECK(read_line(out[0], line, sizeof line));
    CHECK_STR(line, "hello value /tmp");
    CHECK(read_line(err[0], line, sizeof line));
    CHECK_STR(line, "oops");
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cancel_process_free(p);
    close(out[0]);
    close(err[0]);
}

/* Parses "Name:\t<hex>" out of /proc/<pid>/status text. */
static unsigned long long status_mask(const char *text, const char *name)
{
    const char *at = strstr(text, name);
    CHECK(at);
    return strtoull(at + strlen(name), NULL, 16);
}

static void child_starts_clean(void)
{
    /* The spawning thread blocks one signal and the process ignores another:
     * the child has neither. */
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    CHECK(pthread_sigmask(SIG_BLOCK, &usr1, &old) == 0);
    struct sigaction ign = {.sa_handler = SIG_IGN}, prev;
    CHECK(sigaction(SIGUSR2, &ign, &prev) == 0);
    int out[2];
    make_pipe(out);
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.stdout_fd = out[1];
    char *argv[] = {"cat", "/proc/self/status", NULL};
    cancel_process *p;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "cat", argv, &o, &p), 0);
    close(out[1]);
    /* the caller's state is as it was */
    sigset_t now;
    CHECK(pthread_sigmask(SIG_BLOCK, NULL, &now) == 0);
    CHECK(sigismember(&now, SIGUSR1));
    struct sigaction cur;
    CHECK(sigaction(SIGUSR2, NULL, &cur) == 0);
    CHECK(cur.sa_handler == SIG_IGN);
    char text[8192];
    size_t n = 0;
    ssize_t k;
    while ((k = read(out[0], text + n, sizeof text - 1 - n)) > 0)
        n += (size_t)k;
    text[n] = 0;
    close(out[0]);
    CHECK_EQ(status_mask(text, "SigBlk:"), 0);
    CHECK_EQ(status_mask(text, "SigIgn:"), 0);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, NULL), 0);
    cancel_process_free(p);
    CHECK(sigaction(SIGUSR2, &prev, NULL) == 0);
    CHECK(pthread_sigmask(SIG_SETMASK, &old, NULL) == 0);
}

static void process_group(void)
{
    int in[2];
    make_pipe(in);
    cancel_process *p = spawn_sh(CANCEL_TOKEN_NONE, "read x", in[0], -1, NULL);
    CHECK_EQ(getpgid(cancel_process_pid(p)), cancel_process_pid(p)); /* leads its own */
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.own_group = false;
    cancel_process *q = spawn_sh(CANCEL_TOKEN_NONE, "read x", in[0], -1, &o);
    CHECK_EQ(getpgid(cancel_process_pid(q)), getpgrp()); /* stays in ours */
    close(in[1]);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, NULL), 0);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, q, CANCEL_INFINITE, NULL), 0);
    cancel_process_free(p);
    cancel_process_free(q);
    close(in[0]);
}

static bool has_cloexec(int fd)
{
    int f = fcntl(fd, F_GETFD);
    CHECK(f >= 0);
    return (f & FD_CLOEXEC) != 0;
}

/* The numbers of this process's descriptors that a child inherits, with
 * fds 1 and 2 made by the redirections, as a line helper_fds would print. */
static void inheritable(char *line, size_t size)
{
    bool in[1024] = {false};
    DIR *d = opendir("/proc/self/fd");
    CHECK(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd != dirfd(d) && fd < 1024 && !has_cloexec(fd))
            in[fd] = true;
    }
    closedir(d);
    in[1] = in[2] = true;
    size_t n = 0;
    for (int fd = 0; fd < 1024; fd++)
        if (in[fd])
            n += (size_t)snprintf(line + n, size - n, "%d ", fd);
}

static void no_library_descriptor_inherited(void)
{
    /* The library holds descriptors: a token's, a live child's pidfd. */
    cancel_source *s = cancel_source_new();
    CHECK(cancel_token_fd(cancel_source_token(s)) >= 0);
    int in[2];
    make_pipe(in);
    cancel_process *busy = spawn_sh(cancel_source_token(s), "read x", in[0], -1, NULL);
    /* A close-on-exec pipe end given as stdout: the child gets it as 1, and
     * the caller's end keeps its flag. */
    int out[2];
    make_pipe(out);
    char expect[256], line[256];
    inheritable(expect, sizeof expect);
    cancel_process *p = spawn_helper(CANCEL_TOKEN_NONE, "fds", NULL, out[1], NULL);
    CHECK(has_cloexec(out[1]));
    close(out[1]);
    CHECK(read_line(out[0], line, sizeof line));
    CHECK_STR(line, expect);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cancel_process_free(p);
    close(out[0]);
    close(in[1]);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, busy, CANCEL_INFINITE, NULL), 0);
    cancel_process_free(busy);
    close(in[0]);
    cancel_source_free(s);
}

static void timeout(void)
{
    int in[2];
    make_pipe(in);
    cancel_process *p = spawn_sh(CANCEL_TOKEN_NONE, "read x; exit 5", in[0], -1, NULL);
    close(in[0]);
    int st = -1;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, 0, &st), ETIMEDOUT);
    CHECK_EQ(st, -1);
    int64_t t0 = test_now_ns();
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, 20 * MS, &st), ETIMEDOUT);
    CHECK(test_now_ns() - t0 >= 20 * MS); /* never early */
    CHECK_EQ(st, -1);
    close(in[1]); /* read x sees the end: exits */
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, 60 * SEC, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 5);
    cancel_process_free(p);
}

static void manual_clock_timeout(void)
{
    int in[2];
    make_pipe(in);
    cancel_process *p = spawn_sh(CANCEL_TOKEN_NONE, "read x", in[0], -1, NULL);
    close(in[0]);
    cancel_clock_use_manual(true);
    struct waiter w = {CANCEL_TOKEN_NONE, p, SEC, NULL, -1, -1};
    pthread_t t = start_waiter(&w);
    cancel_clock_advance(SEC - 1);
    /* not yet (a snapshot: it could only miss an early return, never fail
     * a correct one) */
    CHECK(atomic_load(&atomic_load(&w.blocked)->what) != NULL);
    cancel_clock_advance(1);
    test_join(t);
    CHECK_EQ(w.result, ETIMEDOUT);
    cancel_clock_use_manual(false);
    close(in[1]);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, NULL), 0);
    cancel_process_free(p);
}

static void wait_token_cancelled_leaves_it_running(void)
{
    int in[2];
    make_pipe(in);
    cancel_process *p = spawn_sh(CANCEL_TOKEN_NONE, "read x; exit 4", in[0], -1, NULL);
    close(in[0]);
    cancel_source *ws = cancel_source_new();
    struct waiter w = {cancel_source_token(ws), p, PATIENT, NULL, -1, -1};
    pthread_t t = start_waiter(&w);
    cancel_source_cancel(ws);
    test_join(t);
    CHECK_EQ(w.result, ECANCELED);
    CHECK_EQ(w.status, -1);
    /* still running: only our write ends it */
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, 0, NULL), ETIMEDOUT);
    CHECK_EQ(cancel_process_signal(p, 0), 0);
    CHECK(write(in[1], "go\n", 3) == 3);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 4);
    cancel_source_free(ws);
    cancel_process_free(p);
    close(in[1]);
}

static void wait_token_freed_midway_keeps_waiting(void)
{
    int in[2];
    make_pipe(in);
    cancel_process *p = spawn_sh(CANCEL_TOKEN_NONE, "read x; exit 6", in[0], -1, NULL);
    close(in[0]);
    cancel_source *ws = cancel_source_new();
    struct waiter w = {cancel_token_retain(cancel_source_token(ws)), p, PATIENT, NULL, -1, -1};
    pthread_t t = start_waiter(&w);
    cancel_source_free(ws); /* its descriptor turns readable: not a cancellation */
    CHECK(write(in[1], "go\n", 3) == 3);
    test_join(t);
    CHECK_EQ(w.result, 0);
    CHECK(WIFEXITED(w.status) && WEXITSTATUS(w.status) == 6);
    cancel_token_release(w.tok);
    cancel_process_free(p);
    close(in[1]);
}

static void concurrent_waits(void)
{
    int in[2];
    make_pipe(in);
    cancel_process *p = spawn_sh(CANCEL_TOKEN_NONE, "read x; exit 7", in[0], -1, NULL);
    close(in[0]);
    struct waiter w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct waiter){CANCEL_TOKEN_NONE, p, PATIENT, NULL, -1, -1};
        t[i] = start_waiter(&w[i]);
    }
    CHECK(write(in[1], "go\n", 3) == 3);
    for (int i = 0; i < 4; i++) {
        test_join(t[i]);
        CHECK_EQ(w[i].result, 0);
        CHECK(WIFEXITED(w[i].status) && WEXITSTATUS(w[i].status) == 7);
    }
    cancel_process_free(p);
    close(in[1]);
}

/* Spawns from several threads at once. */
static void *spawn_loop(void *arg)
{
    int n = *(int *)arg;
    for (int i = 0; i < n; i++) {
        char *argv[] = {i % 2 ? "true" : "false", NULL};
        cancel_process *p;
        CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, argv[0], argv, NULL, &p), 0);
        int st;
        CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &st), 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == (i % 2 ? 0 : 1));
        cancel_process_free(p);
    }
    return NULL;
}

static void spawn_from_threads(void)
{
    int n = TEST_SCALE(100) + 5;
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        t[i] = test_spawn(spawn_loop, &n);
    for (int i = 0; i < 4; i++)
        test_join(t[i]);
    CHECK_EQ(count_children(NULL), 0);
}

/* Under TSan a child of fork may not start threads (the reaper): TEST_TSAN. */

/* What the child of fork does in fork_after_spawn; returns its exit code. */
static int in_forked_child(cancel_source *s, cancel_process *p)
{
    int code = 0;
    char *argv[] = {"sh", "-c", "exit 8", NULL};
    cancel_process *q;
    int st;
    if (cancel_process_spawn(CANCEL_TOKEN_NONE, "sh", argv, NULL, &q) != 0 ||
        cancel_process_wait(CANCEL_TOKEN_NONE, q, CANCEL_INFINITE, &st) != 0 || !WIFEXITED(st) ||
        WEXITSTATUS(st) != 8)
        code |= 1;
    cancel_process_free(q);
    /* The parent's child, seen from here: nothing reaches it (the parent
     * checks it still runs), and it cannot be reaped. */
    cancel_source_cancel(s); /* the copy's callback: signals nothing here */
    if (cancel_process_signal(p, SIGKILL) != ESRCH)
        code |= 4;
    if (cancel_process_wait(CANCEL_TOKEN_NONE, p, 0, NULL) == 0) /* ETIMEDOUT, ECHILD once it ends */
        code |= 2;
    cancel_process_free(p); /* releases the copy only */
    if (!TEST_TSAN) {
        /* A reaper of its own, not the parent's (which runs meanwhile). */
        char *sl[] = {"sleep", "1000", NULL};
        if (cancel_process_spawn(CANCEL_TOKEN_NONE, "sleep", sl, NULL, &q) != 0)
            code |= 8;
        cancel_process_free(q);
        for (int i = 0; i < PATIENCE_MS && count_children(NULL) > 0; i++)
            test_sleep_ns(MS);
        if (count_children(NULL) > 0)
            code |= 16;
    }
    return code;
}

/* fork after spawn: the child of fork spawns and waits its own, and lets go
 * of the parent's copy without signalling it. */
static void fork_after_spawn(void)
{
    /* the parent's reaper is busy with a freed child that ignores SIGTERM */
    int out[2];
    make_pipe(out);
    cancel_process_options so = CANCEL_PROCESS_OPTIONS_INIT;
    so.grace_ns = CANCEL_INFINITE;
    cancel_process *stubborn =
        spawn_sh(CANCEL_TOKEN_NONE, "trap '' TERM; echo ready; exec sleep 1000", -1, out[1], &so);
    close(out[1]);
    char line[32];
    CHECK(read_line(out[0], line, sizeof line));
    pid_t stubborn_pid = cancel_process_pid(stubborn);
    cancel_process_free(stubborn);

    int in[2];
    make_pipe(in);
    cancel_source *s = cancel_source_new();
    cancel_process *p = spawn_sh(cancel_source_token(s), "read x; exit 9", in[0], -1, NULL);
    close(in[0]);
    fflush(stderr);
    pid_t f = fork();
    CHECK(f >= 0);
    if (f == 0)
        _exit(in_forked_child(s, p));
    int st;
    CHECK(waitpid(f, &st, 0) == f);
    CHECK(WIFEXITED(st));
    CHECK_EQ(WEXITSTATUS(st), 0);
    /* ours is untouched: still running, until we let it go */
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, 0, NULL), ETIMEDOUT);
    CHECK(write(in[1], "go\n", 3) == 3);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 9);
    cancel_process_free(p);
    cancel_source_free(s);
    close(in[1]);
    CHECK(kill(stubborn_pid, SIGKILL) == 0); /* the reaper still holds it: unreaped */
    wait_no_children();
    close(out[0]);
}

static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    CHECK(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n - 3; /* ".", ".." and the directory's own */
}

/* Out of descriptors: spawn reports EMFILE and leaves no child; wait, which
 * needs the token's descriptor, reports EMFILE too. */
static void out_of_descriptors(void)
{
    int in[2];
    make_pipe(in);
    cancel_process *p = spawn_sh(CANCEL_TOKEN_NONE, "read x", in[0], -1, NULL);
    close(in[0]);
    cancel_source *s = cancel_source_new();
    int before = open_fds();
    struct rlimit old, low;
    CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0);
    low = old;
    low.rlim_cur = (rlim_t)before + 3;
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
    int fds[64], n = 0;
    while (n < 64 && (fds[n] = fcntl(in[1], F_DUPFD_CLOEXEC, 0)) >= 0)
        n++;
    CHECK(n < 64);
    char *argv[] = {"true", NULL};
    cancel_process *q = (cancel_process *)&q;
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "/bin/true", argv, NULL, &q), EMFILE);
    CHECK(q == NULL);
    CHECK_EQ(cancel_process_wait(cancel_source_token(s), p, CANCEL_INFINITE, NULL), EMFILE);
    while (n > 0)
        close(fds[--n]);
    CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
    CHECK_EQ(open_fds(), before);
    close(in[1]);
    CHECK_EQ(cancel_process_wait(cancel_source_token(s), p, CANCEL_INFINITE, NULL), 0);
    cancel_process_free(p);
    cancel_source_free(s);
    CHECK_EQ(count_children(NULL), 0);
}

/* A signal the kernel refuses (EPERM: the child became another user, as a
 * set-user-ID program does) is reported as refused, not as "already
 * reaped". The refusal is made by a seccomp filter in a child of fork, since
 * the test may run as root. */
static void refused_signal_case(void)
{
    seccomp_refuse(SYS_pidfd_send_signal, 1, SIGUSR1, EPERM);
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.own_group = false;
    cancel_process *p = spawn_sh(CANCEL_TOKEN_NONE, "sleep 10", -1, -1, &o);
    errno = 1234;
    CHECK_EQ(cancel_process_signal(p, SIGUSR1), EPERM);
    CHECK_EQ(errno, 1234);
    CHECK_EQ(cancel_process_signal(p, SIGKILL), 0);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &st), 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    CHECK_EQ(cancel_process_signal(p, SIGUSR1), ESRCH);
    cancel_process_free(p);
}

static void refused_signal(void)
{
    run_filtered(refused_signal_case);
}

int main(int argc, char **argv)
{
    helper_dispatch(argc, argv);
    RUN(exit_status_and_later_waits);
    RUN(path_search);
    RUN(cancelled_before_spawn);
    RUN(spawn_errors);
    RUN(bad_input);
    RUN(redirection_cwd_env);
    RUN(child_starts_clean);
    RUN(process_group);
    RUN(no_library_descriptor_inherited);
    RUN(timeout);
    RUN(manual_clock_timeout);
    RUN(wait_token_cancelled_leaves_it_running);
    RUN(wait_token_freed_midway_keeps_waiting);
    RUN(concurrent_waits);
    RUN(spawn_from_threads);
    RUN(fork_after_spawn);
    RUN(out_of_descriptors);
    RUN(refused_signal);
    int zombies;
    CHECK_EQ(count_children(&zombies), 0);
    CHECK_EQ(zombies, 0);
    return 0;
}
