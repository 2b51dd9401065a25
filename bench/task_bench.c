/*
 * task_bench: the task layer beside GLib's GThreadPool (when pkg-config
 * finds glib-2.0), a mutex+condvar pool written here, and a raw futex wake,
 * measured in the same run. Every pool has 2 threads; one more thread (the
 * benchmark's) submits. Each row runs its contenders in rotation, several
 * times, and prints medians and ratios: on a shared machine, trust the
 * ratios more than the absolute figures.
 *
 *   task_bench [repeats] [--quick]      (default 5 repeats)
 */
#define _GNU_SOURCE
#include <cancel.h>
#include <cancel/task.h>

#include <linux/futex.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifdef TASK_BENCH_HAVE_GLIB
#include <glib.h>

#include "latency.h"
#endif

#define THREADS 2

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static int repeats = 5;
static long n_tasks = 500000;
static int n_samples = 2000;

/* ------------------------------------------------------------------------
 * What every task does: count itself; the last one posts `done`.
 * ------------------------------------------------------------------------ */

static _Atomic long counter;
static long target;
static sem_t done;
static _Atomic int64_t started_at; /* latency runs: when the task began */

static void count_one(void)
{
    if (atomic_fetch_add_explicit(&counter, 1, memory_order_relaxed) + 1 == target)
        sem_post(&done);
}
static void note_start(void)
{
    atomic_store_explicit(&started_at, lat_now(), memory_order_relaxed);
    sem_post(&done);
}

/* ------------------------------------------------------------------------
 * A mutex+condvar pool, as commonly written: a malloc'd job per
 * submission, a FIFO list under one mutex, a signal per push.
 * ------------------------------------------------------------------------ */

struct job {
    void (*fn)(void);
    struct job *next;
};
static struct mpool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *head, *tail;
    bool stop;
    bool discard; /* cancelled: drop queued jobs unrun */
    pthread_t threads[THREADS];
} mp = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, false, false, {0}};
static _Atomic long mp_dropped;

static void *mp_worker(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mp.mu);
    for (;;) {
        while (!mp.head && !mp.stop)
            pthread_cond_wait(&mp.cv, &mp.mu);
        if (!mp.head)
            break;
        struct job *j = mp.head;
        mp.head = j->next;
        if (!mp.head)
            mp.tail = NULL;
        bool discard = mp.discard;
        pthread_mutex_unlock(&mp.mu);
        if (discard) {
            if (atomic_fetch_add_explicit(&mp_dropped, 1, memory_order_relaxed) + 1 == target)
                sem_post(&done);
        } else {
            j->fn();
        }
        free(j);
        pthread_mutex_lock(&mp.mu);
    }
    pthread_mutex_unlock(&mp.mu);
    return NULL;
}
static void mp_start(void)
{
    mp.stop = false;
    for (int i = 0; i < THREADS; i++)
        pthread_create(&mp.threads[i], NULL, mp_worker, NULL);
}
static void mp_stop(void)
{
    pthread_mutex_lock(&mp.mu);
    mp.stop = true;
    pthread_cond_broadcast(&mp.cv);
    pthread_mutex_unlock(&mp.mu);
    for (int i = 0; i < THREADS; i++)
        pthread_join(mp.threads[i], NULL);
}
static void mp_submit(void (*fn)(void))
{
    struct job *j = malloc(sizeof *j);
    j->fn = fn;
    j->next = NULL;
    pthread_mutex_lock(&mp.mu);
    if (mp.tail)
        mp.tail->next = j;
    else
        mp.head = j;
    mp.tail = j;
    pthread_cond_signal(&mp.cv);
    pthread_mutex_unlock(&mp.mu);
}

/* ------------------------------------------------------------------------
 * Contenders
 * ------------------------------------------------------------------------ */

static int ours_count(void *arg, cancel_token tok)
{
    (void)arg;
    (void)tok;
    count_one();
    return 0;
}
static int ours_note(void *arg, cancel_token tok)
{
    (void)arg;
    (void)tok;
    note_start();
    return 0;
}

static void reset(long n)
{
    atomic_store(&counter, 0);
    atomic_store(&mp_dropped, 0);
    target = n;
}

/* Throughput: ns per task, from the first submission to the last task's end. */
static double tp_ours(void)
{
    cancel_pool *p = cancel_pool_new(THREADS, "bench");
    reset(n_tasks);
    int64_t t0 = lat_now();
    for (long i = 0; i < n_tasks; i++)
        cancel_task_run(p, CANCEL_TOKEN_NONE, ours_count, NULL, NULL, NULL);
    sem_wait(&done);
    int64_t t1 = lat_now();
    cancel_pool_free(p);
    return (double)(t1 - t0) / (double)n_tasks;
}
/* Observability: the same tasks in batches of BATCH, each batch waited
 * for; plain tasks, or a report-ready group per batch (created, waited,
 * freed: its records go with it). */
#define BATCH 10000
static double batches_plain(void)
{
    cancel_pool *p = cancel_pool_new(THREADS, "bench");
    int64_t t0 = lat_now();
    for (long done_tasks = 0; done_tasks < n_tasks; done_tasks += BATCH) {
        reset(BATCH);
        for (long i = 0; i < BATCH; i++)
            cancel_task_run(p, CANCEL_TOKEN_NONE, ours_count, NULL, NULL, NULL);
        sem_wait(&done);
    }
    int64_t t1 = lat_now();
    cancel_pool_free(p);
    return (double)(t1 - t0) / (double)(n_tasks / BATCH * BATCH);
}
static double batches_group(void)
{
    cancel_pool *p = cancel_pool_new(THREADS, "bench");
    int64_t t0 = lat_now();
    for (long done_tasks = 0; done_tasks < n_tasks; done_tasks += BATCH) {
        cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "bench");
        reset(BATCH);
        for (long i = 0; i < BATCH; i++)
            cancel_group_spawn(g, ours_count, NULL, NULL);
        cancel_group_wait(g);
        sem_wait(&done);
        cancel_group_free(g);
    }
    int64_t t1 = lat_now();
    cancel_pool_free(p);
    return (double)(t1 - t0) / (double)(n_tasks / BATCH * BATCH);
}
static double tp_mutex(void)
{
    mp_start();
    reset(n_tasks);
    int64_t t0 = lat_now();
    for (long i = 0; i < n_tasks; i++)
        mp_submit(count_one);
    sem_wait(&done);
    int64_t t1 = lat_now();
    mp_stop();
    return (double)(t1 - t0) / (double)n_tasks;
}
#ifdef TASK_BENCH_HAVE_GLIB
static void glib_count(gpointer data, gpointer user)
{
    (void)data;
    (void)user;
    count_one();
}
static void glib_note(gpointer data, gpointer user)
{
    (void)data;
    (void)user;
    note_start();
}
static double tp_glib(void)
{
    GThreadPool *p = g_thread_pool_new(glib_count, NULL, THREADS, TRUE, NULL);
    reset(n_tasks);
    int64_t t0 = lat_now();
    for (long i = 0; i < n_tasks; i++)
        g_thread_pool_push(p, GINT_TO_POINTER(1), NULL);
    sem_wait(&done);
    int64_t t1 = lat_now();
    g_thread_pool_free(p, FALSE, TRUE);
    return (double)(t1 - t0) / (double)n_tasks;
}
#endif

/* Submit-to-start latency with the pool's threads asleep: samples in us. */
#define GAP_NS (300 * 1000)
static void drain_posts(const char *where)
{
    int n = 0;
    while (sem_trywait(&done) == 0)
        n++;
    if (n)
        fprintf(stderr, "%s: %d leftover posts\n", where, n);
}
static void lat_ours(double *out)
{
    drain_posts("lat_ours");
    cancel_pool *p = cancel_pool_new(THREADS, "bench");
    for (int i = 0; i < n_samples; i++) {
        sleep_ns(GAP_NS);
        int64_t t0 = lat_now();
        cancel_task_run(p, CANCEL_TOKEN_NONE, ours_note, NULL, NULL, NULL);
        sem_wait(&done);
        out[i] = (double)(atomic_load(&started_at) - t0) / 1e3;
    }
    cancel_pool_free(p);
}
static void lat_mutex(double *out)
{
    drain_posts("lat_mutex");
    mp_start();
    for (int i = 0; i < n_samples; i++) {
        sleep_ns(GAP_NS);
        int64_t t0 = lat_now();
        mp_submit(note_start);
        sem_wait(&done);
        out[i] = (double)(atomic_load(&started_at) - t0) / 1e3;
    }
    mp_stop();
}
#ifdef TASK_BENCH_HAVE_GLIB
static void lat_glib(double *out)
{
    GThreadPool *p = g_thread_pool_new(glib_note, NULL, THREADS, TRUE, NULL);
    for (int i = 0; i < n_samples; i++) {
        sleep_ns(GAP_NS);
        int64_t t0 = lat_now();
        g_thread_pool_push(p, GINT_TO_POINTER(1), NULL);
        sem_wait(&done);
        out[i] = (double)(atomic_load(&started_at) - t0) / 1e3;
    }
    g_thread_pool_free(p, FALSE, TRUE);
}
#endif
/* The floor: a thread asleep on a futex, woken. */
static _Atomic uint32_t fword;
static _Atomic int fstop;
static void *futex_sleeper(void *arg)
{
    (void)arg;
    for (;;) {
        while (atomic_load(&fword) == 0)
            syscall(SYS_futex, &fword, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
        if (atomic_load(&fstop))
            return NULL;
        atomic_store(&fword, 0);
        note_start();
    }
}
static void lat_futex(double *out)
{
    pthread_t th;
    atomic_store(&fstop, 0);
    atomic_store(&fword, 0);
    pthread_create(&th, NULL, futex_sleeper, NULL);
    for (int i = 0; i < n_samples; i++) {
        sleep_ns(GAP_NS);
        int64_t t0 = lat_now();
        atomic_store(&fword, 1);
        syscall(SYS_futex, &fword, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        sem_wait(&done);
        out[i] = (double)(atomic_load(&started_at) - t0) / 1e3;
    }
    atomic_store(&fstop, 1);
    atomic_store(&fword, 1);
    syscall(SYS_futex, &fword, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    pthread_join(th, NULL);
}

/* Cancelling a group of 10,000 tasks, 2 running (blocked until their
 * token is cancelled: spinning ones would measure how soon the scheduler
 * gives them a CPU back) and the rest queued: ns per task from
 * cancel_group_cancel to cancel_group_wait returning. */
#define GROUP_N 10000
static _Atomic int spinning;
static int spin_until_cancelled(void *arg, cancel_token tok)
{
    (void)arg;
    atomic_fetch_add(&spinning, 1);
    cancel_token_wait(tok, CANCEL_INFINITE);
    return ECANCELED;
}
static double cancel_ours(void)
{
    reset(GROUP_N + 1); /* never reached: count_one posts nothing */
    cancel_pool *p = cancel_pool_new(THREADS, "bench");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "bench");
    atomic_store(&spinning, 0);
    for (int i = 0; i < THREADS; i++)
        cancel_group_spawn(g, spin_until_cancelled, NULL, NULL);
    while (atomic_load(&spinning) < THREADS)
        sched_yield();
    for (int i = THREADS; i < GROUP_N; i++)
        cancel_group_spawn(g, ours_count, NULL, NULL);
    int64_t t0 = lat_now();
    cancel_group_cancel(g);
    cancel_group_wait(g);
    int64_t t1 = lat_now();
    cancel_group_free(g);
    cancel_pool_free(p);
    return (double)(t1 - t0) / GROUP_N;
}
/* The mutex pool's equivalent: a flag its threads read as they pop, so
 * queued jobs are dropped unrun, and a broadcast for the running ones;
 * until every job is gone. */
static bool mp_flag; /* under mp.mu */
static pthread_cond_t mp_flag_cv = PTHREAD_COND_INITIALIZER;
static void mp_spin(void)
{
    atomic_fetch_add(&spinning, 1);
    pthread_mutex_lock(&mp.mu);
    while (!mp_flag)
        pthread_cond_wait(&mp_flag_cv, &mp.mu);
    pthread_mutex_unlock(&mp.mu);
    if (atomic_fetch_add_explicit(&mp_dropped, 1, memory_order_relaxed) + 1 == target)
        sem_post(&done);
}
static double cancel_mutex(void)
{
    mp_start();
    reset(GROUP_N);
    atomic_store(&spinning, 0);
    mp_flag = false;
    for (int i = 0; i < THREADS; i++)
        mp_submit(mp_spin);
    while (atomic_load(&spinning) < THREADS)
        sched_yield();
    for (int i = THREADS; i < GROUP_N; i++)
        mp_submit(count_one);
    int64_t t0 = lat_now();
    pthread_mutex_lock(&mp.mu);
    mp.discard = true;
    mp_flag = true;
    pthread_cond_broadcast(&mp_flag_cv);
    pthread_mutex_unlock(&mp.mu);
    sem_wait(&done);
    int64_t t1 = lat_now();
    pthread_mutex_lock(&mp.mu);
    mp.discard = false;
    pthread_mutex_unlock(&mp.mu);
    mp_stop();
    return (double)(t1 - t0) / GROUP_N;
}

/* Cancel with 1,000 callbacks: the slow-callback measurement off (the
 * default) and on, ns per callback. */
static void nop(void *arg)
{
    (void)arg;
}
static double cancel_callbacks(int64_t threshold)
{
    enum { K = 1000, ROUNDS = 200 };
    static cancel_registration regs[K];
    int64_t old = cancel_set_slow_callback_threshold(threshold);
    int64_t total = 0;
    for (int r = 0; r < ROUNDS; r++) {
        cancel_source *s = cancel_source_new();
        for (int i = 0; i < K; i++)
            cancel_register(cancel_source_token(s), &regs[i], nop, NULL);
        int64_t t0 = lat_now();
        cancel_source_cancel(s);
        total += lat_now() - t0;
        cancel_source_free(s);
    }
    cancel_set_slow_callback_threshold(old);
    return (double)total / (ROUNDS * K);
}
static double cb_off(void)
{
    return cancel_callbacks(CANCEL_INFINITE);
}
static double cb_on(void)
{
    return cancel_callbacks(1000 * 1000 * 1000);
}

/* The floor of a report-ready task: a read of cancel_now()'s clock. */
static double clock_read(void)
{
    enum { N = 2000000 };
    int64_t sum = 0, t0 = lat_now();
    for (int i = 0; i < N; i++)
        sum += cancel_now();
    int64_t t1 = lat_now();
    if (sum == 42)
        puts("");
    return (double)(t1 - t0) / N;
}

/* ------------------------------------------------------------------------ */

typedef double measure_fn(void);

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            n_tasks /= 10;
            n_samples /= 10;
        } else if (atoi(argv[i]) > 0) {
            repeats = atoi(argv[i]) > 31 ? 31 : atoi(argv[i]);
        } else {
            fprintf(stderr, "usage: task_bench [repeats] [--quick]\n");
            return 2;
        }
    }
    sem_init(&done, 0, 0);
#ifdef TASK_BENCH_HAVE_GLIB
    const char *glib = "GLib GThreadPool";
#else
    const char *glib = NULL;
#endif
    printf("libcancel %d.%d.%d task benchmark: medians of %d runs, %d pool threads, %ld tasks per run\n",
           CANCEL_VERSION_MAJOR, CANCEL_VERSION_MINOR, CANCEL_VERSION_PATCH, repeats, THREADS, n_tasks);
    printf("peers: mutex+condvar pool (written here)%s%s\n\n", glib ? ", " : "; GThreadPool not built (no glib-2.0)",
           glib ? glib : "");

    /* 1. throughput */
    double ours[32], mut[32], gl[32], bp[32], bg[32], ck[32];
    for (int r = 0; r < repeats; r++) {
        ck[r] = clock_read();
        ours[r] = tp_ours();
        mut[r] = tp_mutex();
#ifdef TASK_BENCH_HAVE_GLIB
        gl[r] = tp_glib();
#else
        gl[r] = 0;
#endif
        bp[r] = batches_plain();
        bg[r] = batches_group();
    }
    double m_ours = lat_median(ours, repeats), m_mut = lat_median(mut, repeats), m_gl = lat_median(gl, repeats);
    double m_bp = lat_median(bp, repeats), m_bg = lat_median(bg, repeats);
    double best_peer = m_gl > 0 && m_gl < m_mut ? m_gl : m_mut;
    printf("1. empty-task throughput, a stream of %ld tasks (Mops/s; ns per task)\n", n_tasks);
    printf("  %-44s %8.2f  %8.1f ns\n", "libcancel", 1e3 / m_ours, m_ours);
    printf("  %-44s %8.2f  %8.1f ns\n", "mutex+condvar pool", 1e3 / m_mut, m_mut);
    if (m_gl > 0)
        printf("  %-44s %8.2f  %8.1f ns\n", "GLib GThreadPool", 1e3 / m_gl, m_gl);
    printf("  ours / best peer: %.2fx the throughput (target >= 2x)\n", best_peer / m_ours);
    printf("  observability, batches of %d tasks, each waited:\n", BATCH);
    printf("  %-44s %8.2f  %8.1f ns\n", "plain tasks", 1e3 / m_bp, m_bp);
    printf("  %-44s %8.2f  %8.1f ns\n", "a report-ready group per batch", 1e3 / m_bg, m_bg);
    double m_ck = lat_median(ck, repeats);
    printf("  group / plain, time per task: %.2fx (target <= 1.1x)\n", m_bg / m_bp);
    printf("  a group task reads the clock twice (queued; ended, which is also the next one's start):\n");
    printf("  one read of cancel_now() here: %.1f ns; group - plain: %.1f ns = %.1f clock reads\n\n", m_ck,
           m_bg - m_bp, (m_bg - m_bp) / m_ck);
    fflush(stdout);

    /* 2. latency */
    double *s_ours = malloc(sizeof(double) * (size_t)n_samples), *s_fx = malloc(sizeof(double) * (size_t)n_samples);
    double *s_mut = malloc(sizeof(double) * (size_t)n_samples), *s_gl = malloc(sizeof(double) * (size_t)n_samples);
    double p50[4][32], p99[4][32];
    for (int r = 0; r < repeats; r++) {
        lat_futex(s_fx);
        lat_ours(s_ours);
        lat_mutex(s_mut);
        p50[0][r] = lat_percentile(s_fx, n_samples, 0.5), p99[0][r] = lat_percentile(s_fx, n_samples, 0.99);
        p50[1][r] = lat_percentile(s_ours, n_samples, 0.5), p99[1][r] = lat_percentile(s_ours, n_samples, 0.99);
        p50[2][r] = lat_percentile(s_mut, n_samples, 0.5), p99[2][r] = lat_percentile(s_mut, n_samples, 0.99);
#ifdef TASK_BENCH_HAVE_GLIB
        lat_glib(s_gl);
        p50[3][r] = lat_percentile(s_gl, n_samples, 0.5), p99[3][r] = lat_percentile(s_gl, n_samples, 0.99);
#else
        p50[3][r] = p99[3][r] = 0;
#endif
    }
    const char *names[4] = {"raw futex wake (floor)", "libcancel", "mutex+condvar pool", "GLib GThreadPool"};
    double mp50[4], mp99[4];
    for (int k = 0; k < 4; k++) {
        mp50[k] = lat_median(p50[k], repeats);
        mp99[k] = lat_median(p99[k], repeats);
    }
    printf("2. submit-to-start latency, pool threads asleep (us, p50 / p99)\n");
    for (int k = 0; k < 4; k++)
        if (mp50[k] > 0)
            printf("  %-40s %8.2f / %8.2f\n", names[k], mp50[k], mp99[k]);
    printf("  ours / futex wake, p50: %.2fx (target <= 1.3x)\n\n", mp50[1] / mp50[0]);
    fflush(stdout);

    /* 3. cancelling a group */
    double c_ours[32], c_mut[32];
    for (int r = 0; r < repeats; r++) {
        c_ours[r] = cancel_ours();
        c_mut[r] = cancel_mutex();
    }
    double mc = lat_median(c_ours, repeats), mcm = lat_median(c_mut, repeats);
    printf("3. cancelling %d tasks (2 running, the rest queued), ns per task\n", GROUP_N);
    printf("  %-40s %8.1f\n", "libcancel: cancel_group_cancel to wait", mc);
    printf("  %-40s %8.1f\n", "mutex+condvar pool: flag to queue drained", mcm);
    printf("  ours / running an empty task (%.1f ns): %.2fx (target <= 1x)\n\n", m_ours, mc / m_ours);
    fflush(stdout);

    /* 4. observability nobody asked for */
    double off[32], on[32];
    for (int r = 0; r < repeats; r++) {
        off[r] = cb_off();
        on[r] = cb_on();
    }
    double moff = lat_median(off, repeats), mon = lat_median(on, repeats);
    printf("4. cancel with 1,000 callbacks, ns per callback\n");
    printf("  %-40s %8.2f\n", "slow-callback measurement off (default)", moff);
    printf("  %-40s %8.2f\n", "slow-callback measurement on", mon);
    printf("  on / off: %.2fx (off reads no clock)\n", mon / moff);
    free(s_ours);
    free(s_fx);
    free(s_mut);
    free(s_gl);
    return 0;
}
