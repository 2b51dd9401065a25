/* A token across process boundaries (<cancel/process.h>), with real
 * processes: this program runs itself as the child roles (argv[1] names the
 * role). Children report on their standard output, one line per event, which
 * the test reads from a pipe: positive signals only. */
#include "../check.h"

#include <cancel.h>
#include <cancel/process.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static const char *self;

/* Spawns this program as `role`, handing it `fd` as CANCEL_TOKEN_FD (on
 * descriptor 3) and `out` as its standard output. */
static pid_t spawn_role(const char *role, int fd, int out)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, fd, 3);
    if (out >= 0)
        posix_spawn_file_actions_adddup2(&fa, out, 1);
    char envbuf[] = "CANCEL_TOKEN_FD=3";
    char *env[64];
    int n = 0;
    if (fd >= 0)
        env[n++] = envbuf;
    for (char **e = environ; *e && n < 62; e++)
        if (strncmp(*e, "CANCEL_TOKEN_FD=", 16) != 0)
            env[n++] = *e;
    env[n] = NULL;
    char *argv[] = {(char *)self, (char *)role, NULL};
    pid_t pid;
    CHECK_EQ(posix_spawn(&pid, self, &fa, NULL, argv, env), 0);
    posix_spawn_file_actions_destroy(&fa);
    return pid;
}

/* Reads one line from a child's report pipe (bounded wait). */
static bool read_line(FILE *f, char *buf, size_t n)
{
    return fgets(buf, (int)n, f) != NULL;
}

static void report_cause(cancel_token t)
{
    cancel_cause c = cancel_token_cause(t);
    printf("cause %s %d %s %s\n", cancel_reason_name(c.reason), c.code, c.message ? c.message : "-",
           c.origin ? c.origin : "-");
    fflush(stdout);
}

/* ---- child roles ---- */

/* Receives the token, passes it on to a "bottom" child through the process
 * layer (share_token), waits for it. */
static int role_middle(void)
{
    cancel_source *s = cancel_source_new_inherited();
    CHECK(s);
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.share_token = true;
    o.grace_ns = CANCEL_INFINITE; /* the bottom stops on the token itself */
    o.term_signal = SIGCONT;      /* harmless: it is the token that must stop it */
    char *argv[] = {(char *)self, "bottom", NULL};
    cancel_process *p;
    CHECK_EQ(cancel_process_spawn(cancel_source_token(s), self, argv, &o, &p), 0);
    int status;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &status), 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0); /* it stopped by itself */
    cancel_process_free(p);
    cancel_source_free(s);
    return 0;
}

/* Receives the token, says so with its deadline, waits for cancellation and
 * reports its cause. */
static int role_bottom(void)
{
    cancel_source *s = cancel_source_new_inherited();
    CHECK(s);
    cancel_token t = cancel_source_token(s);
    printf("ready %lld\n", (long long)cancel_token_deadline(t));
    fflush(stdout);
    CHECK(cancel_token_wait(t, 60LL * 1000000000));
    printf("at %lld\n", (long long)cancel_now());
    report_cause(t);
    cancel_source_free(s);
    return 0;
}

/* Receives a token whose exporter will free it uncancelled: reports once
 * the library has stopped watching (the exporter told it), and whether it
 * was cancelled. */
static bool nothing_watched(void *unused)
{
    (void)unused;
    cancel_stats st;
    cancel_get_stats(&st);
    return st.watched_fds == 0;
}
static int role_never(void)
{
    cancel_source *s = cancel_source_new_inherited();
    CHECK(s);
    printf("ready\n");
    fflush(stdout);
    CHECK(test_wait_until(nothing_watched, NULL, 30LL * 1000000000));
    printf("settled %d\n", cancel_token_is_requested(cancel_source_token(s)));
    fflush(stdout);
    cancel_source_free(s);
    return 0;
}

/* Exports its own token to a "bottom" and forks a copy of itself that keeps
 * the exporter's end (and does nothing), then waits to be killed. */
static int role_forker(void)
{
    cancel_source *s = cancel_source_new();
    int fd = cancel_token_export_fd(cancel_source_token(s));
    pid_t bottom = spawn_role("bottom", fd, 1);
    close(fd);
    (void)bottom;
    pid_t f = fork();
    if (f == 0) {
        printf("forked %d\n", (int)getpid());
        fflush(stdout);
        for (;;)
            pause();
    }
    for (;;)
        pause();
    return 0;
}

/* ---- the tests ---- */

struct chain {
    pid_t middle;
    FILE *report;
};
static struct chain start_chain(cancel_token t)
{
    int p[2];
    CHECK(pipe(p) == 0);
    int fd = cancel_token_export_fd(t);
    CHECK(fd >= 0);
    struct chain c = {spawn_role("middle", fd, p[1]), fdopen(p[0], "r")};
    close(fd);
    close(p[1]);
    return c;
}
static void end_chain(struct chain *c)
{
    int status;
    CHECK(waitpid(c->middle, &status, 0) == c->middle);
    fclose(c->report);
}

/* Top -> middle -> bottom: a failure at the top reaches the bottom with its
 * reason, code, message and origin; the bottom's deadline is the top's. */
static void failure_crosses_two_boundaries(void)
{
    cancel_source *top = cancel_source_new_child(CANCEL_TOKEN_NONE, 3600LL * 1000000000, "edge");
    int64_t d = cancel_token_deadline(cancel_source_token(top));
    struct chain c = start_chain(cancel_source_token(top));
    char line[4096];
    CHECK(read_line(c.report, line, sizeof line));
    long long bottom_deadline;
    CHECK(sscanf(line, "ready %lld", &bottom_deadline) == 1);
    CHECK_EQ(bottom_deadline, d); /* the same absolute deadline, two hops down */
    CHECK(cancel_source_fail(top, 42, "quota"));
    CHECK(read_line(c.report, line, sizeof line)); /* at ... */
    CHECK(read_line(c.report, line, sizeof line));
    CHECK_STR(line, "cause failed 42 quota edge\n");
    end_chain(&c);
    cancel_source_free(top);
}

/* A deadline at the top fires at the bottom, as a timeout, not before it. */
static void deadline_fires_at_the_bottom(void)
{
    cancel_source *top = cancel_source_new_child(CANCEL_TOKEN_NONE, 300LL * 1000000, "budget");
    int64_t d = cancel_token_deadline(cancel_source_token(top));
    struct chain c = start_chain(cancel_source_token(top));
    char line[4096];
    CHECK(read_line(c.report, line, sizeof line));
    long long at;
    CHECK(read_line(c.report, line, sizeof line));
    CHECK(sscanf(line, "at %lld", &at) == 1);
    CHECK(at >= d); /* never early */
    fprintf(stderr, "   fired at the bottom %.2f ms after the deadline\n", (double)(at - d) / 1e6);
    CHECK(read_line(c.report, line, sizeof line));
    CHECK_STR(line, "cause timeout 0 - budget\n"); /* its own deadline or the top's cause: either way, the top's */
    end_chain(&c);
    cancel_source_free(top);
}

/* Killing the middle (SIGKILL) cancels the bottom with EPIPE: no orphan. */
static void dead_exporter_fails_the_receiver(void)
{
    cancel_source *top = cancel_source_new();
    struct chain c = start_chain(cancel_source_token(top));
    char line[4096];
    CHECK(read_line(c.report, line, sizeof line)); /* the bottom is ready */
    int64_t killed = cancel_now();
    CHECK(kill(c.middle, SIGKILL) == 0);
    CHECK(read_line(c.report, line, sizeof line));
    long long at;
    CHECK(sscanf(line, "at %lld", &at) == 1);
    fprintf(stderr, "   bottom cancelled %.2f ms after the middle was killed\n", (double)(at - killed) / 1e6);
    CHECK(read_line(c.report, line, sizeof line));
    CHECK_STR(line, "cause failed 32 exporting process gone -\n");
    end_chain(&c);
    cancel_source_free(top);
}

/* The exporting source freed uncancelled: the receiver is told, stops
 * watching, and is not cancelled through the descriptor (nor by the end of
 * file that follows). */
static void freed_uncancelled_is_never(void)
{
    cancel_source *top = cancel_source_new();
    int p[2];
    CHECK(pipe(p) == 0);
    int fd = cancel_token_export_fd(cancel_source_token(top));
    pid_t child = spawn_role("never", fd, p[1]);
    close(fd);
    close(p[1]);
    FILE *f = fdopen(p[0], "r");
    char line[256];
    CHECK(read_line(f, line, sizeof line));
    CHECK_STR(line, "ready\n");
    cancel_source_free(top);
    CHECK(read_line(f, line, sizeof line));
    CHECK_STR(line, "settled 0\n");
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    fclose(f);
}

/* A child forked without exec holds the exporter's end too: the receiver
 * fails only once the last exporting process is gone. */
static void forked_child_counts_as_exporter(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t forker = spawn_role("forker", -1, p[1]);
    close(p[1]);
    FILE *f = fdopen(p[0], "r");
    char line[256];
    int forked = 0;
    bool ready = false;
    for (int i = 0; i < 2; i++) { /* "ready" and "forked <pid>", in either order */
        CHECK(read_line(f, line, sizeof line));
        if (strncmp(line, "ready", 5) == 0)
            ready = true;
        else
            CHECK(sscanf(line, "forked %d", &forked) == 1);
    }
    CHECK(ready && forked > 0);
    CHECK(kill(forker, SIGKILL) == 0);
    int status;
    CHECK(waitpid(forker, &status, 0) == forker);
    test_sleep_ns(100 * 1000 * 1000); /* an end of file would have arrived by now... */
    int64_t killed_last = cancel_now();
    CHECK(kill(forked, SIGKILL) == 0); /* ...but only this makes it come */
    CHECK(read_line(f, line, sizeof line));
    long long at;
    CHECK(sscanf(line, "at %lld", &at) == 1);
    CHECK(at >= killed_last);
    CHECK(read_line(f, line, sizeof line));
    CHECK_STR(line, "cause failed 32 exporting process gone -\n");
    fclose(f);
}

/* Exported already cancelled: born cancelled with the cause, in-process. */
static void exported_cancelled_and_in_process(void)
{
    cancel_source *s = cancel_source_new();
    cancel_source_set_name(s, "origin");
    cancel_source_cancel_signal(s, SIGTERM);
    int fd = cancel_token_export_fd(cancel_source_token(s));
    CHECK(fd >= 0);
    cancel_source *r = cancel_source_new_from_fd(fd);
    CHECK(r);
    CHECK(cancel_token_is_requested(cancel_source_token(r)));
    cancel_cause c = cancel_token_cause(cancel_source_token(r));
    CHECK_EQ(c.reason, CANCEL_REASON_SIGNAL);
    CHECK_EQ(c.code, SIGTERM);
    CHECK_STR(c.origin, "origin");
    cancel_source_free(r);
    cancel_source_free(s);

    /* live, in one process: cancel later, the copy follows */
    s = cancel_source_new();
    fd = cancel_token_export_fd(cancel_source_token(s));
    r = cancel_source_new_from_fd(fd);
    CHECK(r && !cancel_token_is_requested(cancel_source_token(r)));
    cancel_source_cancel(s);
    CHECK(cancel_token_wait(cancel_source_token(r), 20LL * 1000000000));
    CHECK_EQ(cancel_token_cause(cancel_source_token(r)).reason, CANCEL_REASON_REQUESTED);
    cancel_source_free(r);
    cancel_source_free(s);
    CHECK(test_wait_until(nothing_watched, NULL, 20LL * 1000000000)); /* nothing left behind */

    /* the receiver freed first: both sides let go */
    s = cancel_source_new();
    fd = cancel_token_export_fd(cancel_source_token(s));
    r = cancel_source_new_from_fd(fd);
    cancel_source_free(r);
    CHECK(test_wait_until(nothing_watched, NULL, 20LL * 1000000000));
    cancel_source_free(s);
}

/* The exporter never dies of SIGPIPE: the receiver's end is closed unread. */
/* Holds the library thread in an asynchronous callback until `go` opens,
 * telling its thread id through `tid`. */
struct hold {
    test_gate held, go;
    _Atomic int tid;
};
static void hold_library_thread(void *arg)
{
    struct hold *h = arg;
    atomic_store(&h->tid, (int)gettid());
    test_gate_open(&h->held);
    test_gate_wait(&h->go);
}

/* Whether SIGPIPE is pending on thread `tid` or on the process. */
static bool sigpipe_pending(int tid)
{
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", tid);
    FILE *f = fopen(path, "r");
    CHECK(f);
    bool pending = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long long mask;
        if ((sscanf(line, "SigPnd: %llx", &mask) == 1 || sscanf(line, "ShdPnd: %llx", &mask) == 1) &&
            (mask & (1ull << (SIGPIPE - 1))))
            pending = true;
    }
    fclose(f);
    return pending;
}

/* The exporter writes to a receiver that has gone: no SIGPIPE, neither
 * delivered (it would end this process) nor left pending on the library
 * thread, which blocks signals. The write is forced: with the library thread
 * held, the token is cancelled before the receiver's end is closed, so the
 * token's readiness comes first in its next batch. (Linux raises no SIGPIPE
 * for a SOCK_SEQPACKET socket at all; MSG_NOSIGNAL covers other kernels.
 * This check fails with a stream socket sent to without MSG_NOSIGNAL.) */
static void no_sigpipe(void)
{
    signal(SIGPIPE, SIG_DFL);
    cancel_source *s = cancel_source_new();
    int fd = cancel_token_export_fd(cancel_source_token(s));
    CHECK(fd >= 0);
    struct hold h = {TEST_GATE_INIT, TEST_GATE_INIT, 0};
    cancel_source *busy = cancel_source_new();
    cancel_registration reg = CANCEL_REGISTRATION_INIT;
    CHECK_EQ(cancel_register(cancel_source_token(busy), &reg, hold_library_thread, &h), 0);
    CHECK(cancel_source_cancel_async(busy));
    test_gate_wait(&h.held);
    cancel_source_cancel(s);
    /* Read what was sent first: a closed end with unread records makes the
     * write fail with ECONNRESET, which raises no signal; EPIPE does. */
    char hello[256];
    CHECK(read(fd, hello, sizeof hello) > 0);
    close(fd);
    test_gate_open(&h.go);
    CHECK(test_wait_until(nothing_watched, NULL, 20LL * 1000000000));
    CHECK(!sigpipe_pending(atomic_load(&h.tid)));
    CHECK(!sigpipe_pending((int)gettid()));
    cancel_unregister(&reg);
    cancel_source_free(busy);
    cancel_source_free(s);
    /* and an export of a token nobody can cancel */
    fd = cancel_token_export_fd(CANCEL_TOKEN_NONE);
    cancel_source *r = cancel_source_new_from_fd(fd);
    CHECK(r && !cancel_token_is_requested(cancel_source_token(r)));
    cancel_source_free(r);
}

static void bad_descriptors(void)
{
    errno = 0;
    CHECK(cancel_source_new_from_fd(-1) == NULL);
    CHECK_EQ(errno, EBADF);
    int p[2];
    CHECK(pipe(p) == 0);
    errno = 0;
    CHECK(cancel_source_new_from_fd(p[0]) == NULL); /* not an exported token */
    CHECK_EQ(errno, EPROTO);
    CHECK(fcntl(p[0], F_GETFD) < 0); /* taken and closed all the same */
    close(p[1]);
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
    CHECK(write(sv[1], "hello, not ours", 15) == 15);
    errno = 0;
    CHECK(cancel_source_new_from_fd(sv[0]) == NULL);
    CHECK_EQ(errno, EPROTO);
    close(sv[1]);

    unsetenv("CANCEL_TOKEN_FD");
    cancel_source *s = cancel_source_new_inherited(); /* none passed: a plain source */
    CHECK(s && cancel_token_can_be_canceled(cancel_source_token(s)));
    cancel_source_free(s);
    setenv("CANCEL_TOKEN_FD", "abc", 1);
    errno = 0;
    CHECK(cancel_source_new_inherited() == NULL);
    CHECK_EQ(errno, EBADF);
    CHECK(getenv("CANCEL_TOKEN_FD") == NULL); /* removed after reading */
    setenv("CANCEL_TOKEN_FD", "987", 1);
    errno = 0;
    CHECK(cancel_source_new_inherited() == NULL);
    CHECK_EQ(errno, EBADF);
}

/* Records made by hand (the format of src/core/export.c), as a broken or
 * hostile peer might send them. */
static int peer_end = -1; /* the peer stays open (no end of file) until the next */
static int peer_with(const unsigned char *rec1, size_t n1, const unsigned char *rec2, size_t n2)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(send(sv[0], rec1, n1, 0) == (ssize_t)n1);
    if (rec2)
        CHECK(send(sv[0], rec2, n2, 0) == (ssize_t)n2);
    if (peer_end >= 0)
        close(peer_end);
    peer_end = sv[0];
    return sv[1];
}
static void hello(unsigned char h[16], int64_t deadline)
{
    memcpy(h, "CNCL\x01\x01", 6);
    for (int i = 0; i < 8; i++)
        h[6 + i] = (unsigned char)((uint64_t)deadline >> (8 * i));
    h[14] = h[15] = 0xff; /* no origin name */
}
static void hostile_records(void)
{
    /* A deadline already passed, no cause yet: the source fires on its own
     * while the library is still setting it up (ASan watches). */
    for (int i = 0; i < TEST_SCALE(2000); i++) {
        unsigned char h[16];
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        hello(h, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - 1000000);
        cancel_source *s = cancel_source_new_from_fd(peer_with(h, sizeof h, NULL, 0));
        CHECK(s);
        CHECK(cancel_token_wait(cancel_source_token(s), 20LL * 1000000000));
        CHECK_EQ(cancel_token_cause(cancel_source_token(s)).reason, CANCEL_REASON_TIMEOUT);
        cancel_source_free(s);
    }
    /* Lengths beyond what a record may carry: refused as broken, never
     * copied (the exporter is then as good as gone). */
    static unsigned char c[15 + 4000];
    memcpy(c, "CNCL\x01\x02", 6);
    c[6] = CANCEL_REASON_FAILED;
    c[7] = 5;
    c[11] = 4000 & 0xff;
    c[12] = 4000 >> 8;
    memset(c + 15, 'A', 4000);
    unsigned char h[16];
    hello(h, -1);
    cancel_source *s = cancel_source_new_from_fd(peer_with(h, sizeof h, c, sizeof c));
    CHECK(s);
    cancel_cause cause = cancel_token_cause(cancel_source_token(s));
    CHECK_EQ(cause.reason, CANCEL_REASON_FAILED);
    CHECK_EQ(cause.code, EPIPE);
    cancel_source_free(s);
    CHECK(test_wait_until(nothing_watched, NULL, 20LL * 1000000000));
    close(peer_end);
    peer_end = -1;
}

int main(int argc, char **argv)
{
    self = "/proc/self/exe";
    if (argc > 1) {
        if (strcmp(argv[1], "middle") == 0)
            return role_middle();
        if (strcmp(argv[1], "bottom") == 0)
            return role_bottom();
        if (strcmp(argv[1], "never") == 0)
            return role_never();
        if (strcmp(argv[1], "forker") == 0)
            return role_forker();
        return 2;
    }
    RUN(bad_descriptors);
    RUN(hostile_records);
    RUN(exported_cancelled_and_in_process);
    RUN(no_sigpipe);
    RUN(failure_crosses_two_boundaries);
    RUN(deadline_fires_at_the_bottom);
    RUN(dead_exporter_fails_the_receiver);
    RUN(freed_uncancelled_is_never);
    RUN(forked_child_counts_as_exporter);
    return 0;
}
