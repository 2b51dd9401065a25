/* Reports: the CPU time a task used after the request, the figure that
 * tells a hog (a task that keeps burning CPU once asked to stop) from a task
 * that stops at once. The hog burns a known amount of its own thread's CPU
 * after its token is cancelled, so the report must show at least that much:
 * a one-sided check on CPU time, which the load of the machine cannot make
 * pass or fail. */
#include "../check.h"

#include <cancel.h>
#include <cancel/task.h>
#include <errno.h>

#define MS (1000 * 1000LL)
#define BURN (50 * MS)

static int64_t thread_cpu_ns(void)
{
    struct timespec ts;
    CHECK_EQ(clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts), 0);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct started {
    _Atomic int n;
    test_gate all;
};

static void count_started(struct started *s)
{
    if (atomic_fetch_add(&s->n, 1) + 1 == 2)
        test_gate_open(&s->all);
}

/* Notices the request at once, then burns BURN of CPU before it gives in. */
static int hog(void *arg, cancel_token tok)
{
    count_started(arg);
    CHECK(cancel_token_wait(tok, CANCEL_INFINITE));
    int64_t until = thread_cpu_ns() + BURN;
    volatile unsigned long x = 1;
    while (thread_cpu_ns() < until)
        for (int i = 0; i < 1000; i++)
            x = x * 6364136223846793005u + 1;
    return ECANCELED;
}

/* Stops as soon as it is asked. */
static int polite(void *arg, cancel_token tok)
{
    count_started(arg);
    CHECK(cancel_token_wait(tok, CANCEL_INFINITE));
    return ECANCELED;
}

/* The value of `key` (a number) in the JSON object of the task named
 * `name`: the report writes each task's fields after its name. */
static long long task_field(const char *json, const char *name, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"name\":\"%s\"", name);
    const char *t = strstr(json, pat);
    CHECK(t);
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *v = strstr(t, pat);
    CHECK(v);
    long long n = -1;
    CHECK_EQ(sscanf(v + strlen(pat), "%lld", &n), 1); /* fails on null */
    return n;
}

static char *report(cancel_group *g, unsigned format)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK(f);
    CHECK_EQ(cancel_group_report(g, f, format), 0);
    fclose(f);
    return text;
}

static void cpu_after_request(void)
{
    cancel_pool *p = cancel_pool_new(2, "cpu");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "cpu");
    CHECK(p && g);
    cancel_group_set_grace(g, 10 * MS); /* the hog runs >= BURN of CPU, so >= BURN of time */
    struct started s = {0, TEST_GATE_INIT};
    CHECK_EQ(cancel_group_spawn(g, hog, &s, "hog"), 0);
    CHECK_EQ(cancel_group_spawn(g, polite, &s, "polite"), 0);
    test_gate_wait(&s.all);
    CHECK(cancel_group_cancel(g));
    CHECK_EQ(cancel_group_wait(g), ECANCELED);

    char *json = report(g, CANCEL_REPORT_JSON);
    fprintf(stderr, "%s\n", json);
    long long hog_cpu = task_field(json, "hog", "cpu_after_request_ns");
    long long polite_cpu = task_field(json, "polite", "cpu_after_request_ns");
    CHECK(hog_cpu >= BURN);
    CHECK(task_field(json, "hog", "response_ns") >= hog_cpu); /* CPU time fits in wall time */
    CHECK(polite_cpu < hog_cpu / 2);                          /* its own CPU only: microseconds */
    CHECK(strstr(strstr(json, "\"name\":\"hog\""), "\"straggler\":true"));
    free(json);

    char *text = report(g, CANCEL_REPORT_TEXT);
    fputs(text, stderr);
    const char *line = strstr(text, "  hog ");
    CHECK(line && strstr(line, "STRAGGLER: ignored the request"));
    free(text);

    cancel_group_free(g);
    cancel_pool_free(p);
}

int main(void)
{
    RUN(cpu_after_request);
    return 0;
}
