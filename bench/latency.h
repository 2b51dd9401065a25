/*
 * Shared by the benchmarks: the clock, medians and percentiles of samples,
 * latency samples and the printed row "ours p50/p99 beside the baseline's,
 * measured in the same run", and a counter one thread bumps and another
 * waits for.
 */
#ifndef CANCEL_BENCH_LATENCY_H
#define CANCEL_BENCH_LATENCY_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline int64_t lat_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void lat_sleep_us(int64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

typedef struct lat {
    double *us;
    int n, cap;
} lat;

static inline void lat_add(lat *l, int64_t ns)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->us = realloc(l->us, sizeof *l->us * (size_t)l->cap);
        if (l->us == NULL)
            abort();
    }
    l->us[l->n++] = (double)ns / 1e3;
}

static inline int lat_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of v[0..n) (sorts v). */
static inline double lat_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, lat_cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The p-quantile (0..1) of v[0..n), nearest rank (sorts v). */
static inline double lat_percentile(double *v, int n, double p)
{
    qsort(v, (size_t)n, sizeof *v, lat_cmp);
    return v[(int)(p * (n - 1) + 0.5)];
}

/* A counter one thread bumps and another waits for. */
struct chan {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned seq;
};
#define CHAN_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0}
static inline void chan_post(struct chan *c)
{
    pthread_mutex_lock(&c->mu);
    c->seq++;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}
static inline void chan_wait(struct chan *c, unsigned seq)
{
    pthread_mutex_lock(&c->mu);
    while (c->seq < seq)
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

/* The p-quantile (0..1), nearest rank. */
static inline double lat_q(lat *l, double p)
{
    qsort(l->us, (size_t)l->n, sizeof *l->us, lat_cmp);
    int i = (int)(p * (l->n - 1) + 0.5);
    return l->us[i];
}

static inline void lat_header(const char *title)
{
    printf("%-34s %16s   %-34s %16s   %s\n", title, "p50 / p99 us", "baseline (same run)", "p50 / p99 us",
           "p50 ratio");
}

static inline void lat_row(const char *what, lat *ours, const char *base_name, lat *base)
{
    double a50 = lat_q(ours, 0.5), a99 = lat_q(ours, 0.99);
    if (base == NULL) {
        printf("%-34s %7.1f / %7.1f   (n=%d)\n", what, a50, a99, ours->n);
        return;
    }
    double b50 = lat_q(base, 0.5), b99 = lat_q(base, 0.99);
    printf("%-34s %7.1f / %7.1f   %-34s %7.1f / %7.1f   %7.3gx\n", what, a50, a99, base_name, b50, b99,
           a50 / b50);
}

#endif
