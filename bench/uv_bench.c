/*
 * uv_bench: how fast a cancellation from another thread reaches a libuv
 * loop through a cancel_uv_t, beside libuv's own cross-thread wake-up
 * (uv_async_send on a uv_async_t) measured in the same run, sample for
 * sample interleaved: from the call on the other thread (cancel_source_cancel,
 * or uv_async_send) to the callback on the loop's thread, while the loop
 * sleeps in epoll. Two baselines: a long-lived uv_async_t, and a uv_async_t
 * initialised for the sample and closed in its callback, the one-shot use
 * that a cancel_uv_t makes of the async handle it is.
 *
 *   uv_bench [rounds] [samples per round and kind]   (default 5 2000)
 *
 * Prints the median over rounds of each round's p50 and p99, and the
 * ratios; beside them, how long the triggering call itself took (p50). On a shared machine trust the ratios more than the times.
 */
#define _GNU_SOURCE
#include <cancel/uv.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "latency.h"

enum kind { OURS, RAW, ONESHOT, KINDS };

/* The loop thread arms a sample when `cmd` wakes it; the main thread
 * triggers it; the callback stamps t1. Both kinds pay the same arming. */
static struct {
    struct chan armed, fired;
    uv_loop_t loop;
    uv_async_t cmd, raw, oneshot;
    cancel_uv_t ours;
    enum kind kind;
    bool stop;
    cancel_source *src;
    int64_t t1;
} S = {.armed = CHAN_INIT, .fired = CHAN_INIT};

static void ours_fired(cancel_uv_t *h)
{
    S.t1 = lat_now();
    cancel_uv_close(h, NULL);
    chan_post(&S.fired);
}
static void raw_fired(uv_async_t *a)
{
    (void)a;
    S.t1 = lat_now();
    chan_post(&S.fired);
}
static void oneshot_fired(uv_async_t *a)
{
    S.t1 = lat_now();
    uv_close((uv_handle_t *)a, NULL);
    chan_post(&S.fired);
}
static void on_cmd(uv_async_t *a)
{
    (void)a;
    if (S.stop) {
        uv_close((uv_handle_t *)&S.cmd, NULL);
        uv_close((uv_handle_t *)&S.raw, NULL);
        return;
    }
    if (S.kind == OURS && cancel_uv_init(&S.loop, &S.ours, cancel_source_token(S.src), ours_fired) != 0)
        abort();
    if (S.kind == ONESHOT && uv_async_init(&S.loop, &S.oneshot, oneshot_fired) != 0)
        abort();
    chan_post(&S.armed);
}
static void *loop_thread(void *arg)
{
    (void)arg;
    uv_run(&S.loop, UV_RUN_DEFAULT);
    return NULL;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5;
    int samples = argc > 2 ? atoi(argv[2]) : 2000;
    if (rounds < 1 || rounds > 64 || samples < 10)
        return 2;
    if (uv_loop_init(&S.loop) || uv_async_init(&S.loop, &S.cmd, on_cmd) || uv_async_init(&S.loop, &S.raw, raw_fired))
        return 1;
    pthread_t th;
    if (pthread_create(&th, NULL, loop_thread, NULL) != 0)
        return 1;
    double *samples_ns[KINDS], *call[KINDS];
    for (int k = 0; k < KINDS; k++) {
        samples_ns[k] = malloc(sizeof(double) * (size_t)samples);
        call[k] = malloc(sizeof(double) * (size_t)samples);
    }
    double p50[KINDS][64], p99[KINDS][64], c50[KINDS][64];
    unsigned n = 0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < samples; i++) {
            for (int k = 0; k < KINDS; k++) {
                S.kind = (enum kind)k;
                S.src = k == OURS ? cancel_source_new() : NULL;
                n++;
                uv_async_send(&S.cmd);
                chan_wait(&S.armed, n);
                /* Give the loop thread time to fall asleep in epoll. */
                int64_t until = lat_now() + 50000;
                while (lat_now() < until) {
                }
                int64_t t0 = lat_now();
                if (k == OURS)
                    cancel_source_cancel(S.src);
                else
                    uv_async_send(k == RAW ? &S.raw : &S.oneshot);
                int64_t returned = lat_now();
                chan_wait(&S.fired, n);
                samples_ns[k][i] = (double)(S.t1 - t0);
                call[k][i] = (double)(returned - t0);
                cancel_source_free(S.src);
            }
        }
        for (int k = 0; k < KINDS; k++) {
            p50[k][r] = lat_percentile(samples_ns[k], samples, 0.50);
            p99[k][r] = lat_percentile(samples_ns[k], samples, 0.99);
            c50[k][r] = lat_percentile(call[k], samples, 0.50);
        }
    }
    S.stop = true;
    uv_async_send(&S.cmd);
    pthread_join(th, NULL);
    if (uv_loop_close(&S.loop) != 0)
        return 1;

    printf("cancel-to-callback latency on a libuv loop, us: median over %d rounds of %d samples\n", rounds,
           samples);
    double m50[KINDS], m99[KINDS], mc[KINDS];
    const char *name[KINDS] = {"cancel_source_cancel -> cancel_uv_t callback",
                               "uv_async_send, long-lived uv_async_t",
                               "uv_async_send, one-shot uv_async_t"};
    for (int k = 0; k < KINDS; k++) {
        m50[k] = lat_percentile(p50[k], rounds, 0.5) / 1000;
        m99[k] = lat_percentile(p99[k], rounds, 0.5) / 1000;
        mc[k] = lat_percentile(c50[k], rounds, 0.5) / 1000;
        printf("  %-46s p50 %7.2f   p99 %7.2f   (the call itself: p50 %5.2f)\n", name[k], m50[k], m99[k], mc[k]);
    }
    printf("  ratio, ours / long-lived uv_async_t:          p50 %.2fx   p99 %.2fx\n", m50[OURS] / m50[RAW],
           m99[OURS] / m99[RAW]);
    printf("  ratio, ours / one-shot uv_async_t:            p50 %.2fx   p99 %.2fx\n", m50[OURS] / m50[ONESHOT],
           m99[OURS] / m99[ONESHOT]);
    for (int k = 0; k < KINDS; k++) {
        free(samples_ns[k]);
        free(call[k]);
    }
    return 0;
}
