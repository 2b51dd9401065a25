/*
 * Stress: threads run a random mix of every operation on a few shared
 * sources for a time budget, with exact accounting.
 *
 *   stress [seconds] [threads] [seed]        (defaults: 2 4 1)
 *
 * Every registration gets a ticket, settled as soon as its fate is known:
 * its callback ran exactly once, or it was removed before it ran
 * (unregister returned true, the source was reset, or it was freed
 * uncancelled), never both, never neither. Each callback also checks that
 * the token is cancelled and that it runs only once. Blocked waiters must
 * all wake (the CTest timeout is the watchdog). Memory stays flat however
 * long it runs: settled tickets and finished sources are freed on the way.
 *
 * Slots hold the shared sources. Operations on a slot's source take the
 * slot's lock for reading (so cancel, fail, cancel_async, cancel_after,
 * registration, unregistration and waiting race each other freely); freeing,
 * replacing and resetting take it for writing, which lets the accounting
 * know exactly which registrations a reset or a free removed.
 */
#include "../check.h"

#include <cancel.h>
#include <errno.h>
#include <sys/resource.h>

enum { SLOTS = 8, MAX_THREADS = 16, MINE = 64 };

/* One source's life: held by its slot while current, and by its tickets. */
struct gen {
    cancel_token tok; /* retained */
    int freed_uncancelled;
    _Atomic int refs;
};

struct ticket {
    cancel_registration reg;
    cancel_token tok; /* retained while registered: keeps unregister valid */
    struct gen *gen;
    struct slot *slot;
    _Atomic int runs;
    int state;                           /* under the slot's lock */
    bool listed;                         /* on the slot's list; under reg_mu or the write lock */
    struct ticket *slot_next, *slot_prev;
    struct ticket *next;                 /* on a settling list */
};
enum { T_REGISTERED, T_REMOVED, T_INERT, T_RESET };

struct slot {
    pthread_rwlock_t rw;
    cancel_source *src; /* under rw (write to change) */
    struct gen *gen;
    struct ticket *regs; /* registered on gen; under reg_mu with rw read, or rw write */
    pthread_mutex_t reg_mu;
};

static struct slot slots[SLOTS];
static _Atomic int stop;
static _Atomic int blocked, max_blocked; /* threads in an unbounded wait; at most half */
static _Atomic long ops, checks, settled;
static pthread_mutex_t left_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ticket *left_over; /* unsettled when their thread stopped */

static struct gen *new_gen(cancel_source *s)
{
    struct gen *g = calloc(1, sizeof *g);
    g->tok = cancel_token_retain(cancel_source_token(s));
    atomic_init(&g->refs, 1); /* the slot's */
    return g;
}
static void put_gen(struct gen *g)
{
    if (atomic_fetch_sub(&g->refs, 1) == 1) {
        cancel_token_release(g->tok);
        free(g);
    }
}

static void on_cancel(void *arg)
{
    struct ticket *t = arg;
    CHECK(cancel_token_is_requested(t->gen->tok));
    atomic_fetch_add(&checks, 2);
    /* The last touch of the ticket: once runs reads 1, it may be freed. */
    int before = atomic_fetch_add(&t->runs, 1);
    CHECK_EQ(before, 0); /* at most once */
}

/* The ticket's fate is known: `runs` must be `expected`. */
static void settle(struct ticket *t, int expected)
{
    CHECK_EQ(atomic_load(&t->runs), expected);
    atomic_fetch_add(&checks, 1);
    atomic_fetch_add(&settled, 1);
    cancel_token_release(t->tok);
    put_gen(t->gen);
    free(t);
}

static void unlink_ticket(struct slot *sl, struct ticket *t)
{
    if (!t->listed)
        return;
    if (t->slot_prev)
        t->slot_prev->slot_next = t->slot_next;
    else
        sl->regs = t->slot_next;
    if (t->slot_next)
        t->slot_next->slot_prev = t->slot_prev;
    t->listed = false;
}

/* Under the slot's write lock: the registrations still listed on the slot's
 * source leave the list; `state` says why (reset, or freed uncancelled), or
 * keeps them registered (freed after cancellation: they run). */
static void drop_listed(struct slot *sl, int state)
{
    while (sl->regs) {
        struct ticket *t = sl->regs;
        sl->regs = t->slot_next;
        t->listed = false;
        if (t->state == T_REGISTERED && state != T_REGISTERED)
            t->state = state;
    }
}

static cancel_source *fresh_source(uint64_t *rng)
{
    if (test_rand(rng) % 4)
        return cancel_source_new();
    /* a linked child of one or two other slots */
    cancel_token parents[2];
    size_t n = 1 + test_rand(rng) % 2;
    for (size_t i = 0; i < n; i++) {
        struct slot *p = &slots[test_rand(rng) % SLOTS];
        if (pthread_rwlock_tryrdlock(&p->rw) != 0) { /* never block: we may hold a write lock */
            parents[i] = CANCEL_TOKEN_NONE;
            continue;
        }
        parents[i] = p->src ? cancel_token_retain(cancel_source_token(p->src)) : CANCEL_TOKEN_NONE;
        pthread_rwlock_unlock(&p->rw);
    }
    cancel_source *s = cancel_source_new_linked(parents, n);
    for (size_t i = 0; i < n; i++)
        cancel_token_release(parents[i]);
    return s;
}

/* Under the write lock: frees the slot's source and records its fate. */
static void free_slot_source(struct slot *sl)
{
    if (!sl->src)
        return;
    cancel_source_free(sl->src);
    sl->src = NULL;
    /* Freed uncancelled exactly when the token never turns cancelled now. */
    sl->gen->freed_uncancelled = !cancel_token_is_requested(sl->gen->tok);
    drop_listed(sl, sl->gen->freed_uncancelled ? T_INERT : T_REGISTERED);
    put_gen(sl->gen);
    sl->gen = NULL;
}

/* Settles what it can of a list of tickets whose callback started (popped):
 * once runs reads 1 the callback is done with them. Returns the rest. */
static struct ticket *settle_ran(struct ticket *list)
{
    struct ticket *rest = NULL;
    while (list) {
        struct ticket *t = list;
        list = t->next;
        if (atomic_load(&t->runs) == 1) {
            settle(t, 1);
        } else {
            t->next = rest;
            rest = t;
        }
    }
    return rest;
}

static void *worker(void *arg)
{
    uint64_t rng = (uintptr_t)arg * 0x9E3779B97F4A7C15u + 1;
    struct ticket *mine[MINE] = {0};
    struct ticket *running = NULL; /* unregister_nowait found them started */
    unsigned sweep = 0;
    while (!atomic_load(&stop)) {
        atomic_fetch_add(&ops, 1);
        if (++sweep % 256 == 0)
            running = settle_ran(running);
        struct slot *sl = &slots[test_rand(&rng) % SLOTS];
        unsigned op = test_rand(&rng) % 100;
        if (op < 30) { /* register, or unregister one of ours */
            unsigned k = test_rand(&rng) % MINE;
            struct ticket *t = mine[k];
            if (!t) {
                pthread_rwlock_rdlock(&sl->rw);
                if (sl->src) {
                    t = calloc(1, sizeof *t);
                    t->gen = sl->gen;
                    atomic_fetch_add(&t->gen->refs, 1);
                    t->slot = sl;
                    t->tok = cancel_token_retain(cancel_source_token(sl->src));
                    bool invoke = test_rand(&rng) & 1;
                    pthread_mutex_lock(&sl->reg_mu); /* orders us with other registrants */
                    int rc = invoke ? cancel_register(t->tok, &t->reg, on_cancel, t)
                                    : cancel_register_noinvoke(t->tok, &t->reg, on_cancel, t);
                    if (rc == 0) {
                        t->state = T_REGISTERED;
                        t->listed = true;
                        t->slot_next = sl->regs;
                        if (sl->regs)
                            sl->regs->slot_prev = t;
                        sl->regs = t;
                        mine[k] = t;
                    }
                    pthread_mutex_unlock(&sl->reg_mu);
                    if (rc != 0) {
                        CHECK_EQ(rc, ECANCELED);
                        settle(t, invoke ? 1 : 0); /* ran inline, or not at all */
                    }
                }
                pthread_rwlock_unlock(&sl->rw);
            } else {
                mine[k] = NULL;
                bool wait = test_rand(&rng) % 8 != 0;
                /* Reading: excludes reset and free, which settle tickets. */
                struct slot *ts = t->slot;
                pthread_rwlock_rdlock(&ts->rw);
                bool removed = wait ? cancel_unregister(&t->reg) : cancel_unregister_nowait(&t->reg);
                pthread_mutex_lock(&ts->reg_mu);
                unlink_ticket(ts, t);
                pthread_mutex_unlock(&ts->reg_mu);
                int state = t->state;
                pthread_rwlock_unlock(&ts->rw);
                if (removed) {
                    CHECK(state == T_REGISTERED); /* not reset, not freed */
                    settle(t, 0);
                } else if (state != T_REGISTERED) {
                    settle(t, 0); /* reset or freed uncancelled: never ran */
                } else if (wait) {
                    settle(t, 1); /* it ran, and we waited for it */
                } else {
                    t->next = running; /* started; it may still be running */
                    running = t;
                }
            }
        } else if (op < 40) { /* cancel, fail, async, signal */
            pthread_rwlock_rdlock(&sl->rw);
            if (sl->src) {
                switch (op % 4) {
                case 0: cancel_source_cancel(sl->src); break;
                case 1: cancel_source_fail(sl->src, EIO, "stress"); break;
                case 2: cancel_source_cancel_async(sl->src); break;
                default: cancel_source_cancel_signal(sl->src, 10); break;
                }
                CHECK(cancel_token_is_requested(sl->gen->tok));
                atomic_fetch_add(&checks, 1);
            }
            pthread_rwlock_unlock(&sl->rw);
        } else if (op < 48) { /* a deadline, usually too far to matter */
            pthread_rwlock_rdlock(&sl->rw);
            if (sl->src) {
                int64_t d = test_rand(&rng) % 2 ? test_rand(&rng) % 2000000 : 3600LL * 1000000000;
                int rc = cancel_source_cancel_after(sl->src, d);
                CHECK(rc == 0 || rc == ECANCELED);
            }
            pthread_rwlock_unlock(&sl->rw);
        } else if (op < 60) { /* wait briefly, or check */
            pthread_rwlock_rdlock(&sl->rw);
            cancel_token t = sl->src ? cancel_token_retain(cancel_source_token(sl->src)) : CANCEL_TOKEN_NONE;
            pthread_rwlock_unlock(&sl->rw);
            bool was = cancel_token_is_requested(t);
            bool got = cancel_token_wait(t, op % 3 ? 0 : test_rand(&rng) % 200000);
            CHECK(!was || got); /* cancellation is never undone */
            atomic_fetch_add(&checks, 1);
            cancel_token_release(t);
        } else if (op < 64) { /* block until cancelled or freed */
            if (atomic_fetch_add(&blocked, 1) >= atomic_load(&max_blocked)) {
                atomic_fetch_sub(&blocked, 1);
                continue;
            }
            pthread_rwlock_rdlock(&sl->rw);
            cancel_token t = sl->src ? cancel_token_retain(cancel_source_token(sl->src)) : CANCEL_TOKEN_NONE;
            pthread_rwlock_unlock(&sl->rw);
            if (cancel_token_wait(t, CANCEL_INFINITE))
                CHECK(cancel_token_is_requested(t));
            else
                CHECK(!cancel_token_can_be_canceled(t));
            atomic_fetch_add(&checks, 1);
            cancel_token_release(t);
            atomic_fetch_sub(&blocked, 1);
        } else if (op < 70) { /* reset */
            pthread_rwlock_wrlock(&sl->rw);
            /* A deadline or a parent may cancel it right after: the removed
             * registrations must still never run. */
            if (sl->src && cancel_source_try_reset(sl->src))
                drop_listed(sl, T_RESET);
            pthread_rwlock_unlock(&sl->rw);
        } else if (op < 80) { /* free and replace */
            pthread_rwlock_wrlock(&sl->rw);
            free_slot_source(sl);
            if (test_rand(&rng) % 4) {
                sl->src = fresh_source(&rng);
                sl->gen = new_gen(sl->src);
            }
            pthread_rwlock_unlock(&sl->rw);
        } else { /* cheap reads */
            pthread_rwlock_rdlock(&sl->rw);
            if (sl->src) {
                cancel_token t = cancel_source_token(sl->src);
                cancel_cause c = cancel_token_cause(t); /* read first: monotonic */
                CHECK(c.reason == CANCEL_REASON_NONE || cancel_token_is_requested(t));
                cancel_source_info info;
                CHECK_EQ(cancel_source_get_info(sl->src, &info), 0);
                atomic_fetch_add(&checks, 2);
            }
            pthread_rwlock_unlock(&sl->rw);
        }
    }
    /* Hand over what is not settled yet: settled once everything stopped. */
    pthread_mutex_lock(&left_mu);
    for (int k = 0; k < MINE; k++)
        if (mine[k]) {
            mine[k]->next = left_over;
            left_over = mine[k];
        }
    while (running) {
        struct ticket *t = running;
        running = t->next;
        t->state = -1; /* started before its thread stopped: must run */
        t->next = left_over;
        left_over = t;
    }
    pthread_mutex_unlock(&left_mu);
    return NULL;
}

/* VmRSS of this process in KiB (-1 if unknown). */
static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 2;
    int nthreads = argc > 2 ? atoi(argv[2]) : 4;
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
    if (nthreads < 1 || nthreads > MAX_THREADS)
        nthreads = 4;
    for (int i = 0; i < SLOTS; i++) {
        pthread_rwlock_init(&slots[i].rw, NULL);
        pthread_mutex_init(&slots[i].reg_mu, NULL);
        slots[i].src = cancel_source_new();
        slots[i].gen = new_gen(slots[i].src);
    }
    atomic_store(&max_blocked, nthreads / 2);
    pthread_t th[MAX_THREADS];
    for (int i = 0; i < nthreads; i++)
        th[i] = test_spawn(worker, (void *)(uintptr_t)(seed * 1000 + (uint64_t)i));
    /* Memory stays flat: resident size after a third of the run (warmed up:
     * arenas, the wheel's arrays, thread stacks) against the end. */
    test_sleep_ns((int64_t)(seconds * 1e9 / 3));
    long rss_warm = rss_kib();
    test_sleep_ns((int64_t)(seconds * 1e9 * 2 / 3));
    long rss_end = rss_kib();
    atomic_store(&stop, 1);
    /* Wake threads blocked forever: cancel every source, then free. */
    for (int i = 0; i < SLOTS; i++) {
        pthread_rwlock_wrlock(&slots[i].rw);
        if (slots[i].src)
            cancel_source_cancel(slots[i].src);
        pthread_rwlock_unlock(&slots[i].rw);
    }
    for (int i = 0; i < nthreads; i++)
        test_join(th[i]);

    /* Still registered when their thread stopped: each source is cancelled
     * or was freed, so each has run (or is inert). */
    struct ticket *started = NULL;
    while (left_over) {
        struct ticket *t = left_over;
        left_over = t->next;
        if (t->state == -1) {
            t->next = started;
            started = t;
            continue;
        }
        bool removed = cancel_unregister(&t->reg); /* valid: t->tok is retained */
        pthread_mutex_lock(&t->slot->reg_mu);
        unlink_ticket(t->slot, t);
        pthread_mutex_unlock(&t->slot->reg_mu);
        if (removed || t->state != T_REGISTERED) {
            settle(t, 0);
        } else if (atomic_load(&t->runs) == 1) {
            settle(t, 1);
        } else {
            /* cancelled asynchronously, not dispatched yet: it will be */
            t->next = started;
            started = t;
        }
    }
    for (int i = 0; i < SLOTS; i++)
        free_slot_source(&slots[i]);

    test_drain_library_thread();
    started = settle_ran(started);
    CHECK(started == NULL); /* every started callback has run exactly once */

    cancel_stats st;
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, 0);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("stress: %.1f s, %d threads, seed %llu: %ld operations, %ld registrations settled, "
           "%ld invariants checked, max RSS %ld KiB, RSS %ld KiB warm, %ld KiB at the end\n",
           seconds, nthreads, (unsigned long long)seed, atomic_load(&ops), atomic_load(&settled),
           atomic_load(&checks), ru.ru_maxrss, rss_warm, rss_end);
    /* Flat: two thirds more of the run grew it by no more than 4 MiB (a
     * leak of one 48-byte object per operation would be hundreds). Not under
     * sanitizers: ASan's quarantine of freed memory grows by design (and
     * LeakSanitizer checks leaks there instead). */
    if (!TEST_SANITIZED)
        CHECK(rss_warm > 0 && rss_end - rss_warm < 4096);
    return 0;
}
