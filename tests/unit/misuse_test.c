/* Misuse: detected and reported in CANCEL_DEBUG builds; the documented
 * behaviour in release builds. Each case runs in a child process. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CANCEL_DEBUG
#define CANCEL_DEBUG 0
#endif

/* Runs fn in a child; returns its exit status, and its stderr in out. */
static int in_child(void (*fn)(void), char *out, size_t n)
{
    int p[2];
    CHECK(pipe(p) == 0);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 2);
        close(p[0]);
        fn();
        _exit(0);
    }
    close(p[1]);
    size_t got = 0;
    ssize_t r;
    while (got + 1 < n && (r = read(p[0], out + got, n - 1 - got)) > 0)
        got += (size_t)r;
    out[got] = 0;
    close(p[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    return status;
}

/* In debug builds: the case must abort with a misuse report naming `what`.
 * In release builds: it must exit normally (its own checks passed). */
static void expect(void (*fn)(void), const char *what)
{
    char out[2048];
    int status = in_child(fn, out, sizeof out);
    if (CANCEL_DEBUG) {
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
        CHECK(strstr(out, "libcancel: misuse") != NULL);
        CHECK(strstr(out, what) != NULL);
        fprintf(stderr, "   reported: %s", out);
    } else {
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fprintf(stderr, "%s", out);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
}

static void double_free_with_retained_token(void)
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(s));
    cancel_source_free(s);
    cancel_source_free(s); /* release: ignored, memory still held */
    CHECK(!cancel_token_can_be_canceled(t));
    cancel_token_release(t);
}

static void double_free(void)
{
    cancel_source *s = cancel_source_new();
    cancel_source_free(s);
    cancel_source_free(s);
}

static void calls_after_free(void)
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(s));
    cancel_source_free(s);
    /* release builds: each call is refused and changes nothing */
    errno = 0;
    CHECK(!cancel_source_cancel(s));
    CHECK_EQ(errno, EINVAL);
    CHECK(!cancel_source_fail(s, 1, "x"));
    CHECK(!cancel_source_cancel_async(s));
    CHECK(!cancel_source_cancel_signal(s, SIGINT));
    CHECK_EQ(cancel_source_cancel_after(s, 1000), EINVAL);
    CHECK(!cancel_source_try_reset(s));
    CHECK_EQ(cancel_source_set_name(s, "late"), EINVAL);
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(s, &info), EINVAL);
    CHECK(!cancel_token_is_requested(t));
    cancel_cause c = cancel_token_cause(t);
    CHECK_EQ(c.reason, CANCEL_REASON_NONE);
    cancel_stats st;
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, 0);
    cancel_token_release(t);
}

static void name_after_free(void)
{
    cancel_source *s = cancel_source_new();
    CHECK_EQ(cancel_source_set_name(s, "gone"), 0);
    cancel_token t = cancel_token_retain(cancel_source_token(s));
    cancel_source_free(s);
    CHECK(cancel_source_name(s) == NULL); /* release: refused, not the freed name */
    cancel_token_release(t);
}

static void unregister_never_registered(void)
{
    cancel_source *s = cancel_source_new();
    cancel_registration r, other;
    CHECK_EQ(cancel_register(cancel_source_token(s), &other, test_never, NULL), 0);
    /* storage that looks registered (it names the source) but never was */
    memcpy(&r, &other, sizeof r);
    ((void **)&r)[0] = NULL;
    ((void **)&r)[1] = NULL;
    cancel_unregister(&r);
}

static void storage_reused_while_registered(void)
{
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_never, NULL), 0);
    cancel_register(cancel_source_token(s), &r, test_never, NULL);
}

int main(void)
{
    fprintf(stderr, "CANCEL_DEBUG=%d\n", CANCEL_DEBUG);
    expect(double_free_with_retained_token, "double free");
    expect(calls_after_free, "after cancel_source_free");
    expect(name_after_free, "cancel_source_name");
    /* The rest are undefined behaviour in release builds (use after free,
     * corrupted lists): only debug builds promise a report, so only they
     * run them (docs/design.md, Misuse). */
    if (CANCEL_DEBUG) {
        /* undefined in release builds: only debug builds can promise a report */
        expect(double_free, "double free");
        expect(unregister_never_registered, "not a registration");
        expect(storage_reused_while_registered, "still registered");
    }
    return 0;
}
