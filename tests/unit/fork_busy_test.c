/* fork while other threads keep using the library: the child must not find
 * the timer lock or the start mutex held. SKIPPED under sanitizers: their
 * allocators may be locked by the busy thread at the moment of fork, and
 * then the child hangs in malloc, which says nothing about the library. */
#include "../check.h"

#include <cancel.h>
#include <sys/wait.h>
#include <unistd.h>

static _Atomic int stop;
static void *busy(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        cancel_source *s = cancel_source_new();
        cancel_source_cancel_after(s, 1000000000);
        cancel_source_free(s);
    }
    return NULL;
}

/* Timed waits in another thread: the clock's sleepers list is locked and
 * unlocked around each, across the forks below. */
static void *timed_waits(void *arg)
{
    (void)arg;
    cancel_source *s = cancel_source_new();
    while (!atomic_load(&stop))
        (void)cancel_token_wait(cancel_source_token(s), 1000);
    cancel_source_free(s);
    return NULL;
}

static void child_arms_deadline(void)
{
    cancel_source *s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(s, 1000), 0);
    CHECK(cancel_token_wait(cancel_source_token(s), 10LL * 1000000000));
    /* a timed wait of its own: the sleepers' lock is free here */
    cancel_source *t = cancel_source_new();
    CHECK(!cancel_token_wait(cancel_source_token(t), 1000));
    cancel_source_free(t);
    cancel_source_free(s);
}

int main(void)
{
    if (TEST_SANITIZED) {
        fprintf(stderr, "SKIPPED: fork during allocations of another thread is unsafe in sanitizer runtimes\n");
        return 77;
    }
    pthread_t t = test_spawn(busy, NULL), w = test_spawn(timed_waits, NULL);
    for (int i = 0; i < 100; i++) {
        fflush(stderr);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            child_arms_deadline();
            _exit(0);
        }
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    atomic_store(&stop, 1);
    test_join(t);
    test_join(w);
    return 0;
}
