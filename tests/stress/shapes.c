/*
 * Shape extremes: a 1,000,000-deep linked chain, a parent with 1,000,000
 * children, 1,000,000 registrations on one token, 1,000,000 pending
 * deadlines. Cancel, free and reset must work without deep recursion, and
 * the allocator's bytes in use must return exactly to where they were.
 * (Sanitizer builds run a tenth of each.)
 */
#include "../check.h"

#include <cancel.h>
#include <malloc.h>
#include <unistd.h>

static size_t in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

#define MIB(x) ((double)(x) / (1 << 20))

static void report(const char *what, size_t before, size_t peak, size_t after)
{
    fprintf(stderr, "   %-28s bytes in use: %zu before, %.1f MiB at peak, %zu after\n", what, before,
            MIB(peak), after);
    if (!TEST_SANITIZED)
        CHECK_EQ(after, before); /* sanitizers keep their own books */
}

static int N;

static void chain(void)
{
    size_t before = in_use();
    cancel_source **v = malloc((size_t)N * sizeof *v);
    v[0] = cancel_source_new();
    for (int i = 1; i < N; i++) {
        cancel_token t = cancel_source_token(v[i - 1]);
        v[i] = cancel_source_new_linked(&t, 1);
    }
    size_t peak = in_use();
    CHECK(cancel_source_try_reset(v[0])); /* keeps the links */
    CHECK(cancel_source_cancel(v[0]));
    CHECK_EQ(cancel_token_cause(cancel_source_token(v[N - 1])).reason, CANCEL_REASON_REQUESTED);
    for (int i = N - 1; i >= 0; i--) /* leaves first this time */
        cancel_source_free(v[i]);
    free(v);
    report("chain", before, peak, in_use());
}

static void wide(void)
{
    size_t before = in_use();
    cancel_source *p = cancel_source_new();
    cancel_token pt = cancel_source_token(p);
    cancel_source **v = malloc((size_t)N * sizeof *v);
    for (int i = 0; i < N; i++)
        v[i] = cancel_source_new_linked(&pt, 1);
    size_t peak = in_use();
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(p, &info), 0);
    CHECK_EQ(info.children, (size_t)N);
    /* free half before cancelling: they unhook */
    for (int i = 0; i < N; i += 2)
        cancel_source_free(v[i]);
    CHECK(cancel_source_cancel(p));
    for (int i = 1; i < N; i += 2)
        CHECK(cancel_token_is_requested(cancel_source_token(v[i])));
    cancel_source_free(p); /* before its children: its memory waits for them */
    for (int i = 1; i < N; i += 2)
        cancel_source_free(v[i]);
    free(v);
    report("wide", before, peak, in_use());
}

static void many_registrations(void)
{
    size_t before = in_use();
    cancel_source *s = cancel_source_new();
    cancel_registration *r = malloc((size_t)N * sizeof *r);
    _Atomic int runs = 0;
    for (int i = 0; i < N; i++)
        CHECK_EQ(cancel_register(cancel_source_token(s), &r[i], test_count, &runs), 0);
    CHECK(cancel_source_try_reset(s)); /* a million removed at once, none runs */
    CHECK_EQ(atomic_load(&runs), 0);
    for (int i = 0; i < N; i++)
        CHECK_EQ(cancel_register(cancel_source_token(s), &r[i], test_count, &runs), 0);
    for (int i = 0; i < N; i += 3) /* unregister the oldest first: each O(1) */
        CHECK(cancel_unregister(&r[i]));
    size_t peak = in_use();
    CHECK(cancel_source_cancel(s));
    CHECK_EQ(atomic_load(&runs), N - (N + 2) / 3);
    cancel_source_free(s);
    free(r);
    report("registrations on one token", before, peak, in_use());
}

static void deadlines(void)
{
    size_t before = in_use();
    cancel_source **v = malloc((size_t)N * sizeof *v);
    for (int i = 0; i < N; i++) {
        v[i] = cancel_source_new();
        CHECK_EQ(cancel_source_cancel_after(v[i], 3600LL * 1000000000 + i), 0);
    }
    size_t peak = in_use();
    cancel_stats st;
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, (size_t)N);
    for (int i = 0; i < N; i += 2)
        CHECK(cancel_source_try_reset(v[i])); /* disarms */
    for (int i = 0; i < N; i++)
        cancel_source_free(v[i]);
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, 0);
    free(v);
    report("pending deadlines", before, peak, in_use());
}

int main(int argc, char **argv)
{
    /* glibc counts chunks parked in its per-thread cache as in use: turn the
     * cache off so that the books are exact. */
    const char *tun = getenv("GLIBC_TUNABLES");
    if (!tun || !strstr(tun, "glibc.malloc.tcache_count=0")) {
        setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0", 1);
        execv("/proc/self/exe", argv);
        perror("execv"); /* measure anyway */
    }
    (void)argc;
    N = TEST_SCALE(1000000);
    /* Warm up what the library keeps for the process: the library thread and
     * the timing wheel's smallest bucket array. */
    cancel_source *w = cancel_source_new();
    cancel_registration r;
    cancel_register(cancel_source_token(w), &r, test_never, NULL);
    cancel_source_cancel_after(w, 3600LL * 1000000000);
    cancel_source_free(w);
    RUN(chain);
    RUN(wide);
    RUN(many_registrations);
    RUN(deadlines);
    return 0;
}
