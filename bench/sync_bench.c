/*
 * sync_bench: the calls of <cancel/sync.h> beside their baselines, measured
 * in the same run.
 *
 *  1. cancel-to-return latency (p50/p99) of a thread blocked in
 *     cancel_sem_wait, cancel_queue_pop and cancel_cond_wait, beside a raw
 *     futex wake of a thread blocked in futex_wait;
 *  2. queue throughput, 1 producer/1 consumer and 2/2, in Mops/s: our queue
 *     (every call passing a live token) beside a mutex+condvar ring written
 *     here and GLib's GAsyncQueue (unbounded) when GLib was found at build
 *     time;
 *  3. the cost of one operation on one thread, nothing contended: semaphore
 *     beside POSIX's, queue with a live token beside CANCEL_TOKEN_NONE (what
 *     being cancellable costs) and beside the mutex+condvar ring.
 *
 * Each measurement is repeated with the contenders in rotation; medians are
 * printed with their ratio. On a shared machine trust the ratios more than
 * the absolute figures.
 *
 *   sync_bench [repeats [sections]]   (default 5; sections: any of queue,latency,uncontended)
 *   sync_bench syscalls KIND N        N uncancelled operations, to count system calls:
 *       strace -c -f sync_bench syscalls queue-wait 20000   (sync_bench syscalls: the kinds)
 */
#define _GNU_SOURCE
#include <cancel.h>
#include <cancel/sync.h>

#include <errno.h>
#include <limits.h>
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

#include "latency.h"

#ifdef SYNC_BENCH_HAVE_GLIB
#include <glib.h>
#endif

static int repeats = 5;

static void futex_wait(_Atomic uint32_t *w, uint32_t v)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}
static void futex_wake(_Atomic uint32_t *w)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* ------------------------------------------------------------------------
 * 1. Cancel-to-return latency
 * ------------------------------------------------------------------------ */

enum kind { RAW_FUTEX, SEM, QUEUE_POP, COND, RAW_COND, KINDS };
static const char *kind_name[KINDS] = {"raw futex wake", "blocked in cancel_sem_wait",
                                       "blocked in cancel_queue_pop", "blocked in cancel_cond_wait",
                                       "raw pthread_cond_broadcast"};

struct blocked {
    sem_t go, armed, done;
    enum kind kind;
    _Atomic uint32_t word;
    cancel_source *src;
    cancel_sem *sem;
    cancel_queue *q;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t t1;
    int result;
    bool flag; /* under mu */
    bool quit;
};

static void *blocked_waiter(void *arg)
{
    struct blocked *l = arg;
    for (;;) {
        sem_wait(&l->go);
        if (l->quit)
            return NULL;
        cancel_token tok = cancel_source_token(l->src);
        int r = 0;
        switch (l->kind) {
        case RAW_FUTEX:
            sem_post(&l->armed);
            while (atomic_load(&l->word) == 0)
                futex_wait(&l->word, 0);
            r = ECANCELED;
            break;
        case SEM:
            sem_post(&l->armed);
            r = cancel_sem_wait(tok, l->sem, CANCEL_INFINITE);
            break;
        case QUEUE_POP: {
            void *item;
            sem_post(&l->armed);
            r = cancel_queue_pop(tok, l->q, &item, CANCEL_INFINITE);
            break;
        }
        case RAW_COND:
            pthread_mutex_lock(&l->mu);
            sem_post(&l->armed);
            while (!l->flag)
                pthread_cond_wait(&l->cv, &l->mu);
            r = ECANCELED;
            break;
        case COND:
            pthread_mutex_lock(&l->mu);
            sem_post(&l->armed);
            while ((r = cancel_cond_wait(tok, &l->cv, &l->mu, CANCEL_INFINITE)) == 0) {
            }
            break;
        default:
            break;
        }
        l->t1 = lat_now();
        if (l->kind == COND || l->kind == RAW_COND)
            pthread_mutex_unlock(&l->mu);
        l->result = r;
        sem_post(&l->done);
    }
}

/* One sample: the waiter blocks, then we cancel (or wake) it; in ns. */
static int64_t blocked_sample(struct blocked *l, enum kind k)
{
    l->kind = k;
    l->flag = false;
    atomic_store(&l->word, 0);
    l->src = cancel_source_new();
    sem_post(&l->go);
    sem_wait(&l->armed);
    lat_sleep_us(300); /* let it fall asleep in the kernel */
    int64_t t0 = lat_now();
    if (k == RAW_FUTEX) {
        atomic_store(&l->word, 1);
        futex_wake(&l->word);
    } else if (k == RAW_COND) {
        pthread_mutex_lock(&l->mu);
        l->flag = true;
        pthread_mutex_unlock(&l->mu);
        pthread_cond_broadcast(&l->cv);
    } else {
        cancel_source_cancel(l->src);
    }
    sem_wait(&l->done);
    if (l->result != ECANCELED) {
        fprintf(stderr, "latency: %s returned %d\n", kind_name[k], l->result);
        exit(1);
    }
    cancel_source_free(l->src);
    return l->t1 - t0;
}

static void latency(void)
{
    struct blocked l;
    memset(&l, 0, sizeof l);
    sem_init(&l.go, 0, 0);
    sem_init(&l.armed, 0, 0);
    sem_init(&l.done, 0, 0);
    l.sem = cancel_sem_new(0);
    l.q = cancel_queue_new(64);
    pthread_mutex_init(&l.mu, NULL);
    pthread_cond_init(&l.cv, NULL);
    pthread_t th;
    pthread_create(&th, NULL, blocked_waiter, &l);

    enum { N = 400 };
    lat v[KINDS] = {{0}};
    for (int k = 0; k < KINDS; k++) /* warm-up: the library thread, the paths */
        blocked_sample(&l, (enum kind)k);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < KINDS; k++)
            lat_add(&v[k], blocked_sample(&l, (enum kind)k));

    printf("\ncancel-to-return latency, %d samples each, the kinds in rotation\n", N);
    lat_header("waiter");
    for (int k = 1; k < RAW_COND; k++)
        lat_row(kind_name[k], &v[k], kind_name[RAW_FUTEX], &v[RAW_FUTEX]);
    lat_row(kind_name[RAW_COND], &v[RAW_COND], kind_name[RAW_FUTEX], &v[RAW_FUTEX]);
    printf("(the last row: the bare condvar wake-up that cancel_cond_wait builds on)\n");
    fflush(stdout);
    for (int k = 0; k < KINDS; k++)
        free(v[k].us);

    l.quit = true;
    sem_post(&l.go);
    pthread_join(th, NULL);
    cancel_sem_free(l.sem);
    cancel_queue_free(l.q);
}

/* ------------------------------------------------------------------------
 * 2. Queue throughput
 * ------------------------------------------------------------------------ */

/* The baseline every C programmer writes: a ring under one mutex, two
 * condition variables, signalled only when someone waits. */
struct mring {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    size_t head, tail, cap;
    int pop_waiters, push_waiters;
    void **buf;
};

static struct mring *mring_new(size_t cap)
{
    struct mring *r = calloc(1, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->not_empty, NULL);
    pthread_cond_init(&r->not_full, NULL);
    r->cap = cap;
    r->buf = calloc(cap, sizeof(void *));
    return r;
}
static void mring_free(struct mring *r)
{
    free(r->buf);
    free(r);
}
static void mring_push(struct mring *r, void *item)
{
    pthread_mutex_lock(&r->mu);
    while (r->tail - r->head == r->cap) {
        r->push_waiters++;
        pthread_cond_wait(&r->not_full, &r->mu);
        r->push_waiters--;
    }
    r->buf[r->tail++ % r->cap] = item;
    if (r->pop_waiters)
        pthread_cond_signal(&r->not_empty);
    pthread_mutex_unlock(&r->mu);
}
static void *mring_pop(struct mring *r)
{
    pthread_mutex_lock(&r->mu);
    while (r->tail == r->head) {
        r->pop_waiters++;
        pthread_cond_wait(&r->not_empty, &r->mu);
        r->pop_waiters--;
    }
    void *item = r->buf[r->head++ % r->cap];
    if (r->push_waiters)
        pthread_cond_signal(&r->not_full);
    pthread_mutex_unlock(&r->mu);
    return item;
}

enum impl { OURS, MRING, GASYNC, IMPLS };
static const char *impl_name[IMPLS] = {"cancel_queue (live token)", "mutex+condvar ring", "GAsyncQueue"};
static bool have_glib =
#ifdef SYNC_BENCH_HAVE_GLIB
    true;
#else
    false;
#endif

#define CAPACITY 1024
#define STOP ((void *)(uintptr_t)-1)

struct tp {
    enum impl impl;
    void *q;
    cancel_token tok;
    long per_producer;
    _Atomic int ready;
    _Atomic int start;
    _Atomic uint64_t sum;
};

static void tp_push(struct tp *t, void *item)
{
    switch (t->impl) {
    case OURS:
        if (cancel_queue_push(t->tok, t->q, item, CANCEL_INFINITE) != 0)
            abort();
        break;
    case MRING:
        mring_push(t->q, item);
        break;
#ifdef SYNC_BENCH_HAVE_GLIB
    case GASYNC:
        g_async_queue_push(t->q, item);
        break;
#endif
    default:
        abort();
    }
}
static void *tp_pop(struct tp *t)
{
    void *item = NULL;
    switch (t->impl) {
    case OURS:
        if (cancel_queue_pop(t->tok, t->q, &item, CANCEL_INFINITE) != 0)
            abort();
        return item;
    case MRING:
        return mring_pop(t->q);
#ifdef SYNC_BENCH_HAVE_GLIB
    case GASYNC:
        return g_async_queue_pop(t->q);
#endif
    default:
        abort();
    }
}

static void tp_gate(struct tp *t)
{
    atomic_fetch_add(&t->ready, 1);
    while (!atomic_load_explicit(&t->start, memory_order_acquire))
        sched_yield();
}
static void *tp_producer(void *arg)
{
    struct tp *t = arg;
    tp_gate(t);
    for (long i = 1; i <= t->per_producer; i++) /* never STOP, never NULL (GAsyncQueue) */
        tp_push(t, (void *)(uintptr_t)i);
    return NULL;
}
static void *tp_consumer(void *arg)
{
    struct tp *t = arg;
    uint64_t sum = 0;
    tp_gate(t);
    for (;;) {
        void *item = tp_pop(t);
        if (item == STOP)
            break;
        sum += (uintptr_t)item;
    }
    atomic_fetch_add(&t->sum, sum);
    return NULL;
}

/* Mops/s for `pairs` producers and as many consumers moving `total` items. */
static double tp_run(enum impl impl, int pairs, long total, cancel_token tok)
{
    struct tp t;
    memset(&t, 0, sizeof t);
    t.impl = impl;
    t.tok = tok;
    t.per_producer = total / pairs;
    switch (impl) {
    case OURS:
        t.q = cancel_queue_new(CAPACITY);
        break;
    case MRING:
        t.q = mring_new(CAPACITY);
        break;
#ifdef SYNC_BENCH_HAVE_GLIB
    case GASYNC:
        t.q = g_async_queue_new();
        break;
#endif
    default:
        abort();
    }
    pthread_t th[8];
    for (int i = 0; i < pairs; i++) {
        pthread_create(&th[i], NULL, tp_producer, &t);
        pthread_create(&th[pairs + i], NULL, tp_consumer, &t);
    }
    while (atomic_load(&t.ready) < 2 * pairs)
        sched_yield();
    int64_t t0 = lat_now();
    atomic_store_explicit(&t.start, 1, memory_order_release);
    for (int i = 0; i < pairs; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < pairs; i++)
        tp_push(&t, STOP);
    for (int i = 0; i < pairs; i++)
        pthread_join(th[pairs + i], NULL);
    int64_t t1 = lat_now();
    uint64_t n = (uint64_t)t.per_producer;
    if (atomic_load(&t.sum) != (uint64_t)pairs * (n * (n + 1) / 2)) {
        fprintf(stderr, "%s: items lost or duplicated\n", impl_name[impl]);
        exit(1);
    }
    switch (impl) {
    case OURS:
        cancel_queue_free(t.q);
        break;
    case MRING:
        mring_free(t.q);
        break;
#ifdef SYNC_BENCH_HAVE_GLIB
    case GASYNC:
        g_async_queue_unref(t.q);
        break;
#endif
    default:
        break;
    }
    return (double)(total / pairs * pairs) / (double)(t1 - t0) * 1000.0;
}

static void throughput(void)
{
    cancel_source *src = cancel_source_new();
    cancel_token tok = cancel_source_token(src);
    const long total = 2000000;
    printf("\nqueue throughput, %ld items per run, capacity %d, medians of %d runs (Mops/s, higher is better)\n",
           total, CAPACITY, repeats);
    printf("%-10s", "");
    for (int i = 0; i < IMPLS; i++)
        if (i != GASYNC || have_glib)
            printf(" %26s", impl_name[i]);
    printf("   %s\n", have_glib ? "ours/ring   ours/GAsyncQueue" : "ours/ring");
    for (int pairs = 1; pairs <= 2; pairs++) {
        double v[IMPLS][64];
        for (int r = 0; r < repeats; r++)
            for (int i = 0; i < IMPLS; i++)
                if (i != GASYNC || have_glib)
                    v[i][r] = tp_run((enum impl)i, pairs, total, tok);
        double m[IMPLS] = {0};
        for (int i = 0; i < IMPLS; i++)
            if (i != GASYNC || have_glib)
                m[i] = lat_median(v[i], repeats);
        char label[16];
        snprintf(label, sizeof label, "%dP/%dC", pairs, pairs);
        printf("%-10s", label);
        for (int i = 0; i < IMPLS; i++)
            if (i != GASYNC || have_glib)
                printf(" %26.2f", m[i]);
        printf("   %8.2fx", m[OURS] / m[MRING]);
        if (have_glib)
            printf("   %15.2fx", m[OURS] / m[GASYNC]);
        printf("\n");
        fflush(stdout);
    }
    if (!have_glib)
        printf("(GLib was not found by pkg-config at build time: GAsyncQueue not measured)\n");
    cancel_source_free(src);
}

/* ------------------------------------------------------------------------
 * 3. One thread, nothing contended: the cost of an operation itself
 * ------------------------------------------------------------------------ */

enum { UNC_N = 1 << 20, UNC_BATCH = 512 };
static cancel_source *unc_src;
static cancel_sem *unc_sem;
static sem_t unc_psem;
static cancel_queue *unc_q;
static struct mring *unc_ring;

static double unc_sem_op(void)
{
    cancel_token tok = cancel_source_token(unc_src);
    int64_t t0 = lat_now();
    for (int i = 0; i < UNC_N; i++) {
        cancel_sem_post(unc_sem);
        cancel_sem_wait(tok, unc_sem, CANCEL_INFINITE);
    }
    return (double)(lat_now() - t0) / UNC_N;
}
static double unc_psem_op(void)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < UNC_N; i++) {
        sem_post(&unc_psem);
        sem_wait(&unc_psem);
    }
    return (double)(lat_now() - t0) / UNC_N;
}
/* Batches of pushes then pops, so that the ring is really walked. */
static double unc_queue(cancel_token tok)
{
    void *item;
    int64_t t0 = lat_now();
    for (int i = 0; i < UNC_N / UNC_BATCH; i++) {
        for (int k = 0; k < UNC_BATCH; k++)
            cancel_queue_push(tok, unc_q, (void *)(uintptr_t)k, CANCEL_INFINITE);
        for (int k = 0; k < UNC_BATCH; k++)
            cancel_queue_pop(tok, unc_q, &item, CANCEL_INFINITE);
    }
    return (double)(lat_now() - t0) / UNC_N;
}
static double unc_queue_live(void)
{
    return unc_queue(cancel_source_token(unc_src));
}
static double unc_queue_none(void)
{
    return unc_queue(CANCEL_TOKEN_NONE);
}
static double unc_ring_op(void)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < UNC_N / UNC_BATCH; i++) {
        for (int k = 0; k < UNC_BATCH; k++)
            mring_push(unc_ring, (void *)(uintptr_t)k);
        for (int k = 0; k < UNC_BATCH; k++)
            mring_pop(unc_ring);
    }
    return (double)(lat_now() - t0) / UNC_N;
}

static void unc_row(const char *what, double (*ours)(void), const char *base_name, double (*base)(void))
{
    double a[64], b[64];
    for (int r = 0; r < repeats; r++) {
        a[r] = ours();
        b[r] = base();
    }
    double ma = lat_median(a, repeats), mb = lat_median(b, repeats);
    printf("%-40s %8.2f   %-34s %8.2f   %5.2fx\n", what, ma, base_name, mb, ma / mb);
    fflush(stdout);
}

static void uncontended(void)
{
    unc_src = cancel_source_new();
    unc_sem = cancel_sem_new(0);
    sem_init(&unc_psem, 0, 0);
    unc_q = cancel_queue_new(CAPACITY);
    unc_ring = mring_new(CAPACITY);
    printf("\none thread, nothing contended (ns per pair of operations, medians of %d)\n", repeats);
    unc_row("cancel_sem_post + cancel_sem_wait", unc_sem_op, "sem_post + sem_wait (POSIX)", unc_psem_op);
    unc_row("cancel_queue push + pop, live token", unc_queue_live, "same, CANCEL_TOKEN_NONE", unc_queue_none);
    unc_row("cancel_queue push + pop, live token", unc_queue_live, "mutex+condvar ring push + pop", unc_ring_op);
    cancel_sem_free(unc_sem);
    sem_destroy(&unc_psem);
    cancel_queue_free(unc_q);
    mring_free(unc_ring);
    cancel_source_free(unc_src);
}

/* ------------------------------------------------------------------------
 * System calls: N uncancelled operations of one kind, to count with
 * strace -c -f (the ping-pong kinds make each wait block, or nearly).
 * ------------------------------------------------------------------------ */

struct pp {
    const char *kind;
    long n;
    cancel_token tok;
    cancel_sem *csem[2];
    sem_t psem[2];
    cancel_queue *cq[2];
    struct mring *mr[2];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long sent; /* under mu: messages sent so far, for the cond kinds */
};

static void pp_send(struct pp *p, int to, long i)
{
    if (!strcmp(p->kind, "sem-wait")) {
        cancel_sem_post(p->csem[to]);
    } else if (!strcmp(p->kind, "raw-sem-wait")) {
        sem_post(&p->psem[to]);
    } else if (!strcmp(p->kind, "queue-wait")) {
        cancel_queue_push(p->tok, p->cq[to], (void *)(uintptr_t)i, CANCEL_INFINITE);
    } else if (!strcmp(p->kind, "raw-queue-wait")) {
        mring_push(p->mr[to], (void *)(uintptr_t)i);
    } else { /* cond-wait, raw-cond-wait */
        (void)to;
        (void)i;
        pthread_mutex_lock(&p->mu);
        p->sent++;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
}

static void pp_recv(struct pp *p, int me, long i)
{
    if (!strcmp(p->kind, "sem-wait")) {
        cancel_sem_wait(p->tok, p->csem[me], CANCEL_INFINITE);
    } else if (!strcmp(p->kind, "raw-sem-wait")) {
        while (sem_wait(&p->psem[me]) != 0) {
        }
    } else if (!strcmp(p->kind, "queue-wait")) {
        void *item;
        cancel_queue_pop(p->tok, p->cq[me], &item, CANCEL_INFINITE);
    } else if (!strcmp(p->kind, "raw-queue-wait")) {
        mring_pop(p->mr[me]);
    } else {
        bool ours = !strcmp(p->kind, "cond-wait");
        pthread_mutex_lock(&p->mu);
        while (p->sent < 2 * i + 2 - me) { /* the partner (me 1) waits for message 2i+1, main for 2i+2 */
            if (ours)
                cancel_cond_wait(p->tok, &p->cv, &p->mu, CANCEL_INFINITE);
            else
                pthread_cond_wait(&p->cv, &p->mu);
        }
        pthread_mutex_unlock(&p->mu);
    }
}

static void *pp_partner(void *arg)
{
    struct pp *p = arg;
    for (long i = 0; i < p->n; i++) {
        pp_recv(p, 1, i);
        pp_send(p, 0, i);
    }
    return NULL;
}

static int syscalls(const char *kind, long n)
{
    cancel_source *src = cancel_source_new();
    struct pp p = {.kind = kind, .n = n, .tok = cancel_source_token(src)};
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    for (int i = 0; i < 2; i++) {
        p.csem[i] = cancel_sem_new(0);
        sem_init(&p.psem[i], 0, 0);
        p.cq[i] = cancel_queue_new(CAPACITY);
        p.mr[i] = mring_new(CAPACITY);
    }
    if (!strcmp(kind, "sem-ready") || !strcmp(kind, "raw-sem-ready")) {
        bool ours = !strcmp(kind, "sem-ready");
        for (long i = 0; i < n; i++) {
            if (ours) {
                cancel_sem_post(p.csem[0]);
                cancel_sem_wait(p.tok, p.csem[0], CANCEL_INFINITE);
            } else {
                sem_post(&p.psem[0]);
                sem_wait(&p.psem[0]);
            }
        }
    } else if (!strcmp(kind, "queue-ready")) {
        void *item;
        for (long i = 0; i < n; i++) {
            cancel_queue_push(p.tok, p.cq[0], NULL, CANCEL_INFINITE);
            cancel_queue_pop(p.tok, p.cq[0], &item, CANCEL_INFINITE);
        }
    } else if (strstr("sem-wait raw-sem-wait queue-wait raw-queue-wait cond-wait raw-cond-wait", kind)) {
        pthread_t th;
        pthread_create(&th, NULL, pp_partner, &p);
        for (long i = 0; i < n; i++) {
            pp_send(&p, 1, i);
            pp_recv(&p, 0, i);
        }
        pthread_join(th, NULL);
    } else {
        fprintf(stderr, "kinds: sem-ready raw-sem-ready queue-ready, and ping-pongs between two threads: sem-wait "
                        "raw-sem-wait queue-wait raw-queue-wait cond-wait raw-cond-wait\n");
        return 2;
    }
    cancel_source_free(src);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "syscalls") == 0)
        return argc == 4 ? syscalls(argv[2], atol(argv[3])) : 2;
    if (argc > 1)
        repeats = atoi(argv[1]);
    if (repeats < 1 || repeats > 64)
        repeats = 5;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    printf("libcancel %d.%d.%d <cancel/sync.h> benchmark: %ld CPUs, %d repeats%s\n", CANCEL_VERSION_MAJOR,
           CANCEL_VERSION_MINOR, CANCEL_VERSION_PATCH, cpus, repeats,
           have_glib ? "" : "; GLib not found: GAsyncQueue left out");
    const char *only = argc > 2 ? argv[2] : "";
    if (!*only || strstr(only, "queue"))
        throughput();
    if (!*only || strstr(only, "latency"))
        latency();
    if (!*only || strstr(only, "uncontended"))
        uncontended();
    return 0;
}
