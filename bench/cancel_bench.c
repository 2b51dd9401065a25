/*
 * cancel_bench: libcancel's core operations beside a baseline measured in the
 * same run. Each measurement is repeated (ours and baseline alternating) and
 * the medians are printed with their ratio; on a shared machine trust the
 * ratios more than the absolute times.
 *
 *   cancel_bench [repeats]      (default 7)
 */
#define _GNU_SOURCE
#include <cancel.h>

#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "latency.h"

static int repeats = 7;
static volatile uint64_t sink;

typedef double measure_fn(void); /* returns ns per operation */

static void row(const char *what, measure_fn *ours, const char *base_name, measure_fn *base)
{
    double a[64], b[64];
    for (int i = 0; i < repeats; i++) {
        a[i] = ours();
        b[i] = base ? base() : 0;
    }
    double ma = lat_median(a, repeats), mb = base ? lat_median(b, repeats) : 0;
    if (base)
        printf("%-46s %9.2f   %-30s %9.2f   %5.2fx\n", what, ma, base_name, mb, ma / mb);
    else
        printf("%-46s %9.2f\n", what, ma);
    fflush(stdout);
}

/* ---- check ---- */
#define CHECK_N 100000000
static cancel_source *live;
static double m_check(void)
{
    cancel_token t = cancel_source_token(live);
    uint64_t n = 0;
    int64_t t0 = lat_now();
    for (int i = 0; i < CHECK_N; i++)
        n += cancel_token_is_requested(t);
    int64_t t1 = lat_now();
    sink = n;
    return (double)(t1 - t0) / CHECK_N;
}
static _Atomic int flag_word;
static double m_acquire_load(void)
{
    uint64_t n = 0;
    int64_t t0 = lat_now();
    for (int i = 0; i < CHECK_N; i++)
        n += atomic_load_explicit(&flag_word, memory_order_acquire) & 1;
    int64_t t1 = lat_now();
    sink = n;
    return (double)(t1 - t0) / CHECK_N;
}

/* ---- register + unregister ---- */
#define REG_N 10000000
static void nop_cb(void *arg)
{
    (void)arg;
}
static double m_register(void)
{
    cancel_token t = cancel_source_token(live);
    cancel_registration r;
    int64_t t0 = lat_now();
    for (int i = 0; i < REG_N; i++) {
        cancel_register(t, &r, nop_cb, NULL);
        cancel_unregister(&r);
    }
    return (double)(lat_now() - t0) / REG_N;
}
static _Atomic uint64_t rmw_word;
static double m_two_rmw(void)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < REG_N; i++) {
        atomic_fetch_add_explicit(&rmw_word, 1, memory_order_acq_rel);
        atomic_fetch_sub_explicit(&rmw_word, 1, memory_order_acq_rel);
    }
    return (double)(lat_now() - t0) / REG_N;
}

/* ---- cancel with 1000 callbacks ---- */
#define CB_N 1000
#define CB_ROUNDS 2000
static cancel_registration cb_regs[CB_N];
static uint64_t cb_counts[CB_N];
static void count_cb(void *arg)
{
    (*(uint64_t *)arg)++;
}
static double m_cancel_callbacks(void)
{
    int64_t total = 0;
    for (int r = 0; r < CB_ROUNDS; r++) {
        cancel_source *s = cancel_source_new();
        cancel_token t = cancel_source_token(s);
        for (int i = 0; i < CB_N; i++)
            cancel_register(t, &cb_regs[i], count_cb, &cb_counts[i]);
        int64_t t0 = lat_now();
        cancel_source_cancel(s);
        total += lat_now() - t0;
        cancel_source_free(s);
    }
    return (double)total / ((double)CB_ROUNDS * CB_N);
}
static cancel_fn *cb_fns[CB_N];
static void *cb_args[CB_N];
static double m_fnptr_loop(void)
{
    for (int i = 0; i < CB_N; i++) {
        cb_fns[i] = count_cb;
        cb_args[i] = &cb_counts[i];
    }
    int64_t total = 0;
    for (int r = 0; r < CB_ROUNDS; r++) {
        int64_t t0 = lat_now();
        for (int i = CB_N - 1; i >= 0; i--) {
            cancel_fn *volatile fn = cb_fns[i]; /* a real indirect call */
            fn(cb_args[i]);
        }
        total += lat_now() - t0;
    }
    return (double)total / ((double)CB_ROUNDS * CB_N);
}

/* ---- create + free ---- */
#define NEW_N 10000000
static double m_create_free(void)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < NEW_N; i++) {
        cancel_source *s = cancel_source_new();
        sink += (uintptr_t)s;
        cancel_source_free(s);
    }
    return (double)(lat_now() - t0) / NEW_N;
}
static double m_malloc_free(void)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < NEW_N; i++) {
        void *p = malloc(56);
        sink += (uintptr_t)p;
        free(p);
    }
    return (double)(lat_now() - t0) / NEW_N;
}
static cancel_token parents[2];
static double linked(size_t n)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < NEW_N; i++) {
        cancel_source *s = cancel_source_new_linked(parents, n);
        sink += (uintptr_t)s;
        cancel_source_free(s);
    }
    return (double)(lat_now() - t0) / NEW_N;
}
static double m_linked1(void)
{
    return linked(1);
}
static double m_linked2(void)
{
    return linked(2);
}

/* ---- deadlines ---- */
#define DL_N 2000000
#define HOUR (3600LL * 1000000000)
static double m_deadline(void)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < DL_N; i++) {
        cancel_source *s = cancel_source_new();
        cancel_source_cancel_after(s, HOUR);
        cancel_source_free(s);
    }
    return (double)(lat_now() - t0) / DL_N;
}
/* cancel_source_new_child must cost what the calls it replaces cost. */
static double m_new_child(void)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < DL_N; i++) {
        cancel_source *s = cancel_source_new_child(parents[0], HOUR, NULL);
        sink += (uintptr_t)s;
        cancel_source_free(s);
    }
    return (double)(lat_now() - t0) / DL_N;
}
static double m_linked_after(void)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < DL_N; i++) {
        cancel_source *s = cancel_source_new_linked(parents, 1);
        cancel_source_cancel_after(s, HOUR);
        sink += (uintptr_t)s;
        cancel_source_free(s);
    }
    return (double)(lat_now() - t0) / DL_N;
}
static double m_create_free_short(void)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < DL_N; i++) {
        cancel_source *s = cancel_source_new();
        sink += (uintptr_t)s;
        cancel_source_free(s);
    }
    return (double)(lat_now() - t0) / DL_N;
}

/* ---- cancel-to-wake latency ---- */
#define LAT_N 2000
static _Atomic int64_t woke_at;
static _Atomic int ready;
static cancel_source *lat_src;
static _Atomic uint32_t raw_word;
static int raw_efd;

static void futex_wait_raw(_Atomic uint32_t *w, uint32_t v)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}
static void futex_wake_raw(_Atomic uint32_t *w)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

enum { L_WAIT, L_FUTEX, L_FD, L_EVENTFD };
static void *lat_waiter(void *arg)
{
    int kind = (int)(intptr_t)arg;
    cancel_token t = cancel_source_token(lat_src);
    int fd = kind == L_FD ? cancel_token_fd(t) : raw_efd;
    atomic_store(&ready, 1);
    if (kind == L_WAIT) {
        cancel_token_wait(t, CANCEL_INFINITE);
    } else if (kind == L_FUTEX) {
        while (atomic_load(&raw_word) == 0)
            futex_wait_raw(&raw_word, 0);
    } else {
        struct pollfd p = {fd, POLLIN, 0};
        while (poll(&p, 1, -1) != 1) {
        }
    }
    atomic_store(&woke_at, lat_now());
    return NULL;
}
static void latency(int kind, double *out)
{
    for (int i = 0; i < LAT_N; i++) {
        lat_src = cancel_source_new();
        atomic_store(&raw_word, 0);
        raw_efd = eventfd(0, EFD_CLOEXEC);
        atomic_store(&ready, 0);
        pthread_t th;
        pthread_create(&th, NULL, lat_waiter, (void *)(intptr_t)kind);
        while (!atomic_load(&ready)) {
        }
        struct timespec pause = {0, 200000}; /* let it block */
        nanosleep(&pause, NULL);
        int64_t t0 = lat_now();
        if (kind == L_WAIT || kind == L_FD) {
            cancel_source_cancel(lat_src);
        } else if (kind == L_FUTEX) {
            atomic_store(&raw_word, 1);
            futex_wake_raw(&raw_word);
        } else {
            uint64_t one = 1;
            if (write(raw_efd, &one, sizeof one) != sizeof one)
                abort();
        }
        pthread_join(th, NULL);
        out[i] = (double)(atomic_load(&woke_at) - t0) / 1000.0;
        close(raw_efd);
        cancel_source_free(lat_src);
    }
}
static void latency_row(const char *what, int kind, const char *base_name, int base_kind)
{
    static double a[LAT_N], b[LAT_N], c[LAT_N], d[LAT_N];
    /* interleave in halves so that drift hits both */
    latency(kind, a);
    latency(base_kind, b);
    latency(kind, c);
    latency(base_kind, d);
    static double x[2 * LAT_N], y[2 * LAT_N];
    memcpy(x, a, sizeof a);
    memcpy(x + LAT_N, c, sizeof c);
    memcpy(y, b, sizeof b);
    memcpy(y + LAT_N, d, sizeof d);
    double p50a = lat_percentile(x, 2 * LAT_N, 0.5), p99a = lat_percentile(x, 2 * LAT_N, 0.99);
    double p50b = lat_percentile(y, 2 * LAT_N, 0.5), p99b = lat_percentile(y, 2 * LAT_N, 0.99);
    printf("%-46s %5.2f/%6.2f   %-30s %5.2f/%6.2f   %5.2fx\n", what, p50a, p99a, base_name, p50b, p99b,
           p50a / p50b);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        repeats = atoi(argv[1]);
    if (repeats < 1 || repeats > 64)
        repeats = 7;
    live = cancel_source_new();
    cancel_source *p1 = cancel_source_new(), *p2 = cancel_source_new();
    parents[0] = cancel_source_token(p1);
    parents[1] = cancel_source_token(p2);

    printf("libcancel %d.%d.%d core benchmark: medians of %d runs\n", CANCEL_VERSION_MAJOR,
           CANCEL_VERSION_MINOR, CANCEL_VERSION_PATCH, repeats);
    printf("%-46s %9s   %-30s %9s   %6s\n", "operation", "ns/op", "baseline (same run)", "ns/op", "ratio");
    row("check a live token", m_check, "acquire load of an atomic_int", m_acquire_load);
    row("register + unregister", m_register, "two atomic RMW", m_two_rmw);
    row("cancel with 1,000 callbacks, per callback", m_cancel_callbacks, "fn-pointer loop, per call",
        m_fnptr_loop);
    row("create + free a source", m_create_free, "malloc(56) + free", m_malloc_free);
    row("linked create + free, 1 parent", m_linked1, "create + free a source", m_create_free);
    row("linked create + free, 2 parents", m_linked2, "create + free a source", m_create_free);
    row("create + cancel_after(1 h) + free, 0 pending", m_deadline, "create + free a source",
        m_create_free_short);
    row("new_child(parent, 1 h, NULL) + free", m_new_child, "linked + cancel_after + free",
        m_linked_after);

    enum { PENDING = 1000000 };
    cancel_source **pend = malloc(PENDING * sizeof *pend);
    for (int i = 0; i < PENDING; i++) {
        pend[i] = cancel_source_new();
        cancel_source_cancel_after(pend[i], HOUR);
    }
    row("same, 1,000,000 deadlines pending", m_deadline, "create + free a source", m_create_free_short);
    for (int i = 0; i < PENDING; i++)
        cancel_source_free(pend[i]);
    free(pend);

    printf("%-46s %12s   %-30s %12s\n", "cancel-to-wake latency", "p50/p99 us", "baseline (same run)",
           "p50/p99 us");
    latency_row("blocked in cancel_token_wait", L_WAIT, "raw futex wake", L_FUTEX);
    latency_row("blocked in poll on cancel_token_fd", L_FD, "raw eventfd write", L_EVENTFD);

    cancel_source_free(live);
    cancel_source_free(p1);
    cancel_source_free(p2);
    return 0;
}
