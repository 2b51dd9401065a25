/*
 * Shared by the integrations' benchmarks: latency samples and the printed
 * row "ours p50/p99 beside the baseline's, measured in the same run".
 */
#ifndef CANCEL_BENCH_LATENCY_H
#define CANCEL_BENCH_LATENCY_H

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

static int lat_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
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
