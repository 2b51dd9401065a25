/*
 * Stress: threads run a random mix of every operation on a few shared
 * sources for a time budget, with exact accounting.
 *
 *   stress [seconds] [threads] [seed]        (defaults: 2 4 1)
 *
 * Every registration gets a ticket. At the end, when everything is
 * cancelled or freed and the library thread has drained, each ticket must
 * show its callback ran exactly once, or was removed before it ran
 * (unregister returned true, the source was reset, or it was freed
 * uncancelled), never both, never neither; each callback checks the token is
 * cancelled and that it runs only once. Blocked waiters must all wake (the
 * CTest timeout is the watchdog).
 *
 * Slots hold the shared sources. Operations on a slot's source take the
 * slot's lock for reading (so cancel, fail, cancel_async, cancel_after,
 * registration and waiting race each other freely); freeing, replacing and
 * resetting take it for writing, which lets the accounting know exactly which
 * registrations a reset or a free removed.
 */
#include "../check.h"

#include <cancel.h>
#include <errno.h>

enum { SLOTS = 8, MAX_THREADS = 16 };

/* One source's life. */
struct gen {
    cancel_token tok; /* retained by the test for the whole run */
    int freed_uncancelled;
};

struct ticket {
    cancel_registration reg;
    cancel_token tok; /* retained while registered: keeps unregister valid */
    struct gen *gen;
    struct slot *slot;
    _Atomic int runs;
    int state;                /* under the slot's lock */
    struct ticket *slot_next; /* on the slot's list of registrations */
    struct ticket *done_next; /* on the list checked at the end */
};
enum { T_REGISTERED, T_REMOVED, T_RAN_OR_INERT, T_NOWAIT_FALSE, T_RESET };

struct slot {
    pthread_rwlock_t rw;
    cancel_source *src; /* under rw (write to change) */
    struct gen *gen;
    struct ticket *regs; /* tickets registered on gen; under rw write or reg_mu */
    pthread_mutex_t reg_mu;
};

static struct slot slots[SLOTS];
static _Atomic int stop;
static _Atomic int blocked, max_blocked; /* threads in an unbounded wait; at most half */
static _Atomic long ops, checks;
static pthread_mutex_t gens_mu = PTHREAD_MUTEX_INITIALIZER;
static struct gen **gens;
static size_t ngens, capgens;
static pthread_mutex_t done_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ticket *done_tickets; /* checked at the end */

static struct gen *new_gen(cancel_source *s)
{
    struct gen *g = calloc(1, sizeof *g);
    g->tok = cancel_token_retain(cancel_source_token(s));
    pthread_mutex_lock(&gens_mu);
    if (ngens == capgens) {
        capgens = capgens ? 2 * capgens : 256;
        gens = realloc(gens, capgens * sizeof *gens);
    }
    gens[ngens++] = g;
    pthread_mutex_unlock(&gens_mu);
    return g;
}

static void on_cancel(void *arg)
{
    struct ticket *t = arg;
    CHECK(cancel_token_is_requested(t->gen->tok));
    int before = atomic_fetch_add(&t->runs, 1);
    CHECK_EQ(before, 0); /* at most once */
    atomic_fetch_add(&checks, 2);
}

static void retire(struct ticket *t)
{
    pthread_mutex_lock(&done_mu);
    t->done_next = done_tickets;
    done_tickets = t;
    pthread_mutex_unlock(&done_mu);
}

/* Under the slot's write lock: the registrations still listed on the slot's
 * source leave the list with `state` (reset or freed uncancelled). */
static void drop_listed(struct slot *sl, int state)
{
    while (sl->regs) {
        struct ticket *t = sl->regs;
        sl->regs = t->slot_next;
        if (t->state == T_REGISTERED)
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

/* Frees the slot's source (under the write lock) and records its fate. */
static void free_slot_source(struct slot *sl)
{
    if (!sl->src)
        return;
    cancel_source_free(sl->src);
    sl->src = NULL;
    /* Freed uncancelled exactly when the token never turns cancelled now. */
    sl->gen->freed_uncancelled = !cancel_token_is_requested(sl->gen->tok);
    if (sl->gen->freed_uncancelled)
        drop_listed(sl, T_RAN_OR_INERT);
    else
        sl->regs = NULL; /* they run (or ran): checked at the end */
}

static void *worker(void *arg)
{
    uint64_t rng = (uintptr_t)arg * 0x9E3779B97F4A7C15u + 1;
    struct ticket *mine[64] = {0};
    while (!atomic_load(&stop)) {
        atomic_fetch_add(&ops, 1);
        struct slot *sl = &slots[test_rand(&rng) % SLOTS];
        unsigned op = test_rand(&rng) % 100;
        if (op < 30) { /* register, or unregister one of ours */
            unsigned k = test_rand(&rng) % 64;
            struct ticket *t = mine[k];
            if (!t) {
                pthread_rwlock_rdlock(&sl->rw);
                if (sl->src) {
                    t = calloc(1, sizeof *t);
                    t->gen = sl->gen;
                    t->slot = sl;
                    t->tok = cancel_token_retain(cancel_source_token(sl->src));
                    bool invoke = test_rand(&rng) & 1;
                    pthread_mutex_lock(&sl->reg_mu); /* orders us with drop_listed */
                    int rc = invoke ? cancel_register(t->tok, &t->reg, on_cancel, t)
                                    : cancel_register_noinvoke(t->tok, &t->reg, on_cancel, t);
                    if (rc == 0) {
                        t->state = T_REGISTERED;
                        t->slot_next = sl->regs;
                        sl->regs = t;
                        mine[k] = t;
                    }
                    pthread_mutex_unlock(&sl->reg_mu);
                    if (rc != 0) {
                        CHECK_EQ(rc, ECANCELED);
                        CHECK_EQ(atomic_load(&t->runs), invoke ? 1 : 0);
                        atomic_fetch_add(&checks, 2);
                        cancel_token_release(t->tok);
                        free(t);
                    }
                }
                pthread_rwlock_unlock(&sl->rw);
            } else {
                mine[k] = NULL;
                bool wait = test_rand(&rng) % 8 != 0;
                /* Reading: excludes reset and free, which settle tickets. */
                pthread_rwlock_rdlock(&t->slot->rw);
                bool removed = wait ? cancel_unregister(&t->reg) : cancel_unregister_nowait(&t->reg);
                if (removed) {
                    CHECK(t->state == T_REGISTERED); /* not reset, not freed */
                    CHECK_EQ(atomic_load(&t->runs), 0);
                    t->state = T_REMOVED;
                } else if (t->state == T_REGISTERED) {
                    /* a dispatcher popped it: it ran (and we waited), or runs soon */
                    t->state = wait ? T_RAN_OR_INERT : T_NOWAIT_FALSE;
                    if (wait)
                        CHECK_EQ(atomic_load(&t->runs), 1);
                } else {
                    CHECK_EQ(atomic_load(&t->runs), 0); /* reset or freed uncancelled */
                }
                pthread_rwlock_unlock(&t->slot->rw);
                atomic_fetch_add(&checks, 1);
                retire(t); /* final check once everything settled */
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
        } else if (op < 60) { /* wait briefly, or check, or poll the fd */
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
    for (int k = 0; k < 64; k++)
        if (mine[k])
            retire(mine[k]); /* still registered: settled by the end */
    return NULL;
}

static void drained(void *arg)
{
    test_gate_open(arg);
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
    test_sleep_ns((int64_t)(seconds * 1e9));
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
    for (int i = 0; i < SLOTS; i++)
        free_slot_source(&slots[i]);

    /* The library thread works in order: once this runs, every dispatch
     * queued or fired before it is done. */
    test_gate gate = TEST_GATE_INIT;
    cancel_source *last = cancel_source_new();
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(last), &r, drained, &gate), 0);
    cancel_source_cancel_async(last);
    test_gate_wait(&gate);
    cancel_source_free(last);

    long tickets = 0;
    while (done_tickets) {
        struct ticket *t = done_tickets;
        done_tickets = t->done_next;
        int runs = atomic_load(&t->runs);
        switch (t->state) {
        case T_REMOVED:
        case T_RESET:
            CHECK_EQ(runs, 0);
            break;
        case T_REGISTERED: /* never unregistered: its source was cancelled or freed */
            CHECK(!cancel_unregister(&t->reg));
            /* fall through */
        case T_RAN_OR_INERT:
        case T_NOWAIT_FALSE:
            CHECK_EQ(runs, t->gen->freed_uncancelled ? 0 : 1);
            break;
        }
        atomic_fetch_add(&checks, 1);
        cancel_token_release(t->tok);
        free(t);
        tickets++;
    }
    for (size_t i = 0; i < ngens; i++) {
        cancel_token_release(gens[i]->tok);
        free(gens[i]);
    }
    free(gens);
    cancel_stats st;
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, 0);
    printf("stress: %.1f s, %d threads, seed %llu: %ld operations, %ld registrations settled, "
           "%ld invariants checked\n",
           seconds, nthreads, (unsigned long long)seed, atomic_load(&ops), tickets, atomic_load(&checks));
    return 0;
}
