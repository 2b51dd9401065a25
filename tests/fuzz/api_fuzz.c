/*
 * API-sequence fuzzer. The input bytes choose a sequence of calls on up to
 * four sources (plain or linked), eight registrations and two retained
 * tokens; after each call a model of what the header promises is compared
 * with what the library reports: cancellation and its cause (including
 * propagation to linked children), callback runs, registration and child
 * counts, pending deadlines, waits and descriptors.
 *
 * Built as a libFuzzer target with clang (-DCANCEL_BUILD_FUZZ=ON), or, by
 * default, as a program that replays the files given on its command line
 * (the seed corpus, in CTest).
 */
#include "../check.h"

#include <cancel.h>

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                           \
    do {                                                                                    \
        fprintf(stderr, "api_fuzz: " __VA_ARGS__);                                          \
        fprintf(stderr, "\n");                                                              \
        abort();                                                                            \
    } while (0)
#define ASSERT(c)                                                                           \
    do {                                                                                    \
        if (!(c))                                                                           \
            FAIL("%s:%d: %s", __FILE__, __LINE__, #c);                                      \
    } while (0)

enum { SLOTS = 4, REGS = 8, HELD = 2, MAX_GENS = 512 };

/* The model of one source's life. */
struct gen {
    cancel_source *src;   /* NULL once freed */
    cancel_token held;    /* retained by the model for the whole input */
    int cancelled, dead;  /* dead: freed uncancelled */
    cancel_reason reason;
    int code;
    int origin;           /* generation where the cancellation started */
    int parents[SLOTS], nparents;
    int armed;
    int named;
};

struct reg {
    cancel_registration r;
    int gen;       /* -1: free */
    int listed;    /* the model says it is waiting in the list */
    int expected;  /* runs the model expects */
    int runs;
};

static struct gen gens[MAX_GENS];
static int ngens;
static int slot_gen[SLOTS];
static struct reg regs[REGS];
static int held_gen[HELD];
static cancel_token held_tok[HELD];

static const char *const names[] = {"a", "b", "c", "d"};

static void ran(void *arg)
{
    struct reg *r = arg;
    r->runs++;
    ASSERT(r->runs <= 1);
    ASSERT(cancel_token_is_requested(gens[r->gen].held));
}

/* The model's view of a cancellation of generation g with reason/code. */
static void model_cancel(int g, cancel_reason reason, int code, int origin)
{
    /* iterative over descendants, like the library */
    int stack[MAX_GENS], top = 0;
    if (gens[g].cancelled || gens[g].dead)
        return;
    gens[g].cancelled = 1;
    gens[g].reason = reason;
    gens[g].code = code;
    gens[g].origin = origin;
    stack[top++] = g;
    while (top) {
        int p = stack[--top];
        gens[p].armed = 0;
        for (int k = 0; k < REGS; k++)
            if (regs[k].gen == p && regs[k].listed) {
                regs[k].listed = 0;
                regs[k].expected = 1;
            }
        for (int c = 0; c < ngens; c++) {
            if (!gens[c].src || gens[c].cancelled || gens[c].dead)
                continue; /* only live children still hold their links */
            for (int i = 0; i < gens[c].nparents; i++)
                if (gens[c].parents[i] == p) {
                    gens[c].cancelled = 1;
                    gens[c].reason = reason;
                    gens[c].code = code;
                    gens[c].origin = origin;
                    stack[top++] = c;
                    break;
                }
        }
    }
}

static void check_gen(int g)
{
    struct gen *m = &gens[g];
    cancel_token t = m->held;
    ASSERT(cancel_token_is_requested(t) == m->cancelled);
    ASSERT(cancel_token_can_be_canceled(t) == !m->dead);
    ASSERT(cancel_token_wait(t, 0) == m->cancelled);
    cancel_cause c = cancel_token_cause(t);
    ASSERT(c.reason == (m->cancelled ? m->reason : CANCEL_REASON_NONE));
    if (m->cancelled) {
        ASSERT(c.code == m->code);
        if (gens[m->origin].named)
            ASSERT(c.origin && strcmp(c.origin, names[m->origin % 4]) == 0);
        else
            ASSERT(c.origin == NULL);
        if (m->reason == CANCEL_REASON_FAILED)
            ASSERT(c.message && strcmp(c.message, "fuzz") == 0);
    }
    if (m->src) {
        cancel_source_info info;
        ASSERT(cancel_source_get_info(m->src, &info) == 0);
        size_t listed = 0, children = 0;
        for (int k = 0; k < REGS; k++)
            listed += regs[k].gen == g && regs[k].listed;
        for (int c2 = 0; c2 < ngens; c2++)
            if (gens[c2].src && !m->cancelled)
                for (int i = 0; i < gens[c2].nparents; i++)
                    children += gens[c2].parents[i] == g;
        ASSERT(info.registrations == listed);
        ASSERT(info.children == children);
        ASSERT((info.deadline_ns != CANCEL_INFINITE) == m->armed);
    }
}

static void check_all(void)
{
    for (int g = 0; g < ngens; g++)
        check_gen(g);
    for (int k = 0; k < REGS; k++)
        if (regs[k].gen >= 0)
            ASSERT(regs[k].runs == regs[k].expected);
    size_t armed = 0;
    for (int g = 0; g < ngens; g++)
        armed += gens[g].armed;
    cancel_stats st;
    cancel_get_stats(&st);
    ASSERT(st.deadlines_pending == armed);
}

static int new_gen(cancel_source *s)
{
    int g = ngens++;
    memset(&gens[g], 0, sizeof gens[g]);
    gens[g].src = s;
    gens[g].held = cancel_token_retain(cancel_source_token(s));
    return g;
}

static void reset_all(void)
{
    for (int k = 0; k < REGS; k++)
        if (regs[k].gen >= 0) {
            cancel_unregister(&regs[k].r);
            regs[k].gen = -1;
        }
    for (int i = 0; i < HELD; i++)
        if (held_gen[i] >= 0) {
            cancel_token_release(held_tok[i]);
            held_gen[i] = -1;
        }
    for (int s = 0; s < SLOTS; s++)
        slot_gen[s] = -1;
    for (int g = 0; g < ngens; g++)
        if (gens[g].src)
            cancel_source_free(gens[g].src);
    for (int g = 0; g < ngens; g++)
        cancel_token_release(gens[g].held);
    ngens = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int s = 0; s < SLOTS; s++)
        slot_gen[s] = -1;
    for (int k = 0; k < REGS; k++)
        regs[k].gen = -1;
    for (int i = 0; i < HELD; i++)
        held_gen[i] = -1;
    ngens = 0;
    size_t i = 0;
    while (i + 1 < size && ngens < MAX_GENS - 1) {
        uint8_t op = data[i++] % 14, arg = data[i++];
        int slot = arg % SLOTS, g = slot_gen[slot];
        struct gen *m = g >= 0 ? &gens[g] : NULL;
        switch (op) {
        case 0: /* new source */
        case 1: /* new linked source, parents picked by bits of arg */
            if (g >= 0)
                break;
            if (op == 0) {
                g = new_gen(cancel_source_new());
            } else {
                cancel_token p[SLOTS];
                int pg[SLOTS], n = 0;
                for (int b = 0; b < SLOTS; b++)
                    if ((arg >> (4 + b)) & 1 && slot_gen[b] >= 0) {
                        pg[n] = slot_gen[b];
                        p[n++] = cancel_source_token(gens[slot_gen[b]].src);
                    }
                cancel_source *s = cancel_source_new_linked(p, (size_t)n);
                ASSERT(s);
                g = new_gen(s);
                /* Hooked in order; the first cancelled parent makes it born
                 * cancelled, and the links hooked before it stay. */
                for (int j = 0; j < n; j++) {
                    if (gens[pg[j]].cancelled) {
                        gens[g].cancelled = 1;
                        gens[g].reason = gens[pg[j]].reason;
                        gens[g].code = gens[pg[j]].code;
                        gens[g].origin = gens[pg[j]].origin;
                        break;
                    }
                    gens[g].parents[gens[g].nparents++] = pg[j];
                }
            }
            slot_gen[slot] = g;
            break;
        case 2: /* free */
            if (!m)
                break;
            cancel_source_free(m->src);
            m->src = NULL;
            m->armed = 0;
            if (!m->cancelled) {
                m->dead = 1;
                for (int k = 0; k < REGS; k++)
                    if (regs[k].gen == g && regs[k].listed)
                        regs[k].listed = 0; /* inert: never runs */
            }
            m->nparents = 0; /* unhooked */
            slot_gen[slot] = -1;
            break;
        case 3: /* cancel */
            if (!m)
                break;
            ASSERT(cancel_source_cancel(m->src) == !m->cancelled);
            model_cancel(g, CANCEL_REASON_REQUESTED, 0, g);
            break;
        case 4: /* fail */
            if (!m)
                break;
            ASSERT(cancel_source_fail(m->src, arg, "fuzz") == !m->cancelled);
            model_cancel(g, CANCEL_REASON_FAILED, arg, g);
            break;
        case 5: /* cancel_async or cancel_signal, then let the library thread run */
            if (!m)
                break;
            if (arg & 0x80) {
                ASSERT(cancel_source_cancel_signal(m->src, 1 + (arg & 31)) == !m->cancelled);
                model_cancel(g, CANCEL_REASON_SIGNAL, 1 + (arg & 31), g);
            } else {
                ASSERT(cancel_source_cancel_async(m->src) == !m->cancelled);
                model_cancel(g, CANCEL_REASON_REQUESTED, 0, g);
            }
            test_drain_library_thread();
            break;
        case 6: /* deadlines: arm far away, disarm, or expire at once */
            if (!m)
                break;
            if (arg & 0x40) {
                ASSERT(cancel_source_cancel_after(m->src, CANCEL_INFINITE) == 0);
                m->armed = 0;
            } else if (arg & 0x80) {
                ASSERT(cancel_source_cancel_after(m->src, 0) == (m->cancelled ? ECANCELED : 0));
                model_cancel(g, CANCEL_REASON_TIMEOUT, 0, g);
                test_drain_library_thread();
            } else {
                int rc = cancel_source_cancel_after(m->src, 3600LL * 1000000000);
                ASSERT(rc == (m->cancelled ? ECANCELED : 0));
                m->armed = !m->cancelled;
            }
            break;
        case 7: /* reset */
            if (!m)
                break;
            ASSERT(cancel_source_try_reset(m->src) == !m->cancelled);
            if (!m->cancelled) {
                m->armed = 0;
                for (int k = 0; k < REGS; k++)
                    if (regs[k].gen == g && regs[k].listed)
                        regs[k].listed = 0;
            }
            break;
        case 8: { /* register */
            struct reg *r = &regs[(arg >> 2) % REGS];
            if (!m || r->gen >= 0)
                break;
            int invoke = arg & 0x80;
            r->gen = g;
            r->runs = 0;
            int rc = invoke ? cancel_register(cancel_source_token(m->src), &r->r, ran, r)
                            : cancel_register_noinvoke(cancel_source_token(m->src), &r->r, ran, r);
            ASSERT(rc == (m->cancelled ? ECANCELED : 0));
            r->listed = !m->cancelled;
            r->expected = m->cancelled && invoke;
            break;
        }
        case 9: { /* unregister, waiting or not */
            struct reg *r = &regs[(arg >> 2) % REGS];
            if (r->gen < 0)
                break;
            bool removed = (arg & 0x80) ? cancel_unregister_nowait(&r->r) : cancel_unregister(&r->r);
            ASSERT(removed == r->listed);
            ASSERT(r->runs == r->expected);
            r->gen = -1;
            break;
        }
        case 10: /* name */
            if (!m)
                break;
            ASSERT(cancel_source_set_name(m->src, names[g % 4]) == (m->named ? EBUSY : 0));
            m->named = 1;
            break;
        case 11: { /* retain / release a token */
            int h = arg & 1;
            if (held_gen[h] >= 0) {
                cancel_token_release(held_tok[h]);
                held_gen[h] = -1;
            } else if (m) {
                held_tok[h] = cancel_token_retain(cancel_source_token(m->src));
                held_gen[h] = g;
            }
            break;
        }
        case 12: /* the descriptor */
            if (!m)
                break;
            {
                int fd = cancel_token_fd(cancel_source_token(m->src));
                ASSERT(fd >= 0);
                struct pollfd p = {fd, POLLIN, 0};
                ASSERT((poll(&p, 1, 0) == 1) == m->cancelled);
            }
            break;
        default: /* the tokens we hold agree with the model of their source */
            for (int h = 0; h < HELD; h++)
                if (held_gen[h] >= 0)
                    ASSERT(cancel_token_is_requested(held_tok[h]) == gens[held_gen[h]].cancelled);
            break;
        }
        check_all();
    }
    reset_all();
    return 0;
}

#ifndef CANCEL_LIBFUZZER
/* Replays corpus files (the seed corpus in CTest). */
int main(int argc, char **argv)
{
    int n = 0;
    for (int a = 1; a < argc; a++) {
        FILE *f = fopen(argv[a], "rb");
        if (!f) {
            perror(argv[a]);
            return 1;
        }
        uint8_t buf[1 << 16];
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, len);
        n++;
    }
    printf("api_fuzz: replayed %d inputs\n", n);
    return n > 0 ? 0 : 1; /* an empty corpus tests nothing: fail, never pass */
}
#endif
