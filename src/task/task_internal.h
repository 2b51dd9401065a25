/*
 * The task layer's private structures, shared by its files:
 *
 *   wake.c    parking a thread and waking it (per-thread futex words, wait
 *             lists under striped mutexes): the bottom of the layer
 *   pool.c    pools, their queue and threads, tasks, waiting (with help)
 *   group.c   groups: spawning, fail fast, waiting, nesting
 *   report.c  stats and reports (text, JSON)
 *
 * Calls go one way: report.c -> group.c -> pool.c -> wake.c. The layer uses
 * the core only through <cancel.h>, plus src/block/block.h (timeouts and the
 * blocked-in word).
 *
 * Protection notes: "r/o" is written before the object is published and
 * never again; "own" is written only by the thread that owns the object at
 * that moment (the task's pool thread, the group's owner); atomics say what
 * they pair with where they are used.
 */
#ifndef CANCEL_TASK_INTERNAL_H
#define CANCEL_TASK_INTERNAL_H

#include "cancel.h"
#include "cancel/task.h"

#include "block/block.h"
#include "platform/platform.h"

#include <pthread.h>
#include <time.h>

#define CANCEL__NO_TIME INT64_MIN /* a time not (yet) recorded */
/* A record's `cancelled` once its task returned before any request reached
 * it (its token did not read cancelled): no sweep notes it from then on,
 * and a note made just before is withdrawn (pool.c, run_task). Reports read
 * it as CANCEL__NO_TIME. */
#define CANCEL__NOT_ASKED (INT64_MIN + 1)

/* ---- wake.c: parking ---- */

/* A thread waiting for something: a node on its stack, in the wait list of
 * what it waits for, protected by that object's stripe mutex. */
struct cancel__waiter {
    struct cancel__waiter *next, **pprev; /* under the stripe; pprev NULL: not listed */
    _Atomic uint32_t *word;              /* the waiting thread's parker word */
};

/* The mutex that protects the wait list of `obj` (one of a fixed table,
 * chosen by address). */
CANCEL_HIDDEN pthread_mutex_t *cancel__stripe(const void *obj);
/* The calling thread's parker word: 1 once someone woke it. */
CANCEL_HIDDEN _Atomic uint32_t *cancel__parker(void);
/* Sets the word to 1 and wakes its thread. */
CANCEL_HIDDEN void cancel__parker_wake(_Atomic uint32_t *word);
/* The same, as a cancellation callback (arg: the word). */
CANCEL_HIDDEN void cancel__parker_wake_cb(void *word);
/* Sleeps while the word is 0, until woken or abs_deadline_ns
 * (CLOCK_MONOTONIC, -1: none). */
CANCEL_HIDDEN void cancel__parker_sleep(_Atomic uint32_t *word, int64_t abs_deadline_ns);

/* Under the stripe of the list's owner. */
CANCEL_HIDDEN void cancel__waiters_add(struct cancel__waiter **head, struct cancel__waiter *w);
CANCEL_HIDDEN void cancel__waiters_remove(struct cancel__waiter *w);
/* Wakes every waiter and empties the list: for what happens once. */
CANCEL_HIDDEN void cancel__waiters_wake_all(struct cancel__waiter **head);
/* Wakes every waiter and leaves them listed (each removes itself): for what
 * can happen again, such as a group's count meeting zero. */
CANCEL_HIDDEN void cancel__waiters_wake_listed(struct cancel__waiter *head);

/* ---- the pool ---- */

#define CANCEL__CACHELINE 64

/* The queue is Vyukov's intrusive multi-producer queue: producers swap the
 * tail (one atomic exchange) and then link; one consumer at a time pops,
 * under a try-lock (pool.c). */
struct cancel__qnode {
    struct cancel__qnode *_Atomic next;
};

struct cancel__worker {
    /* A line (or two) each: the fields below are written by their thread
     * on every task, and read or written by others on wake-ups. */
    _Alignas(CANCEL__CACHELINE) struct cancel_pool *pool; /* r/o */
    pthread_t thread;                    /* r/o once started */
    _Atomic uint32_t *parker;            /* r/o: the thread's parker word, parker_word below */
    _Atomic uint32_t parker_word;        /* in pool memory, so that a waker holding the pool
                                            may touch it at any time */
    size_t id;                           /* r/o: its index, and its bit in pool->idle_mask */
    struct cancel__blocked *blocked;     /* the thread's blocked-in word; under pool->report_mu
                                            (NULL before the thread starts and after it ends) */
    clockid_t cpu_clock;                 /* the thread's CPU clock; r/o once blocked is set */
    bool has_cpu_clock;                  /* r/o once blocked is set */
    struct cancel_task *_Atomic current; /* the task it runs (innermost when helping); own,
                                            read by reports (relaxed: a snapshot) */
    int64_t last_end;                    /* own: when its last group task returned, if it went
                                            straight on to the next one; else CANCEL__NO_TIME */
    struct cancel__spare *spare;         /* own: freed task blocks, a batch being filled */
    unsigned dropped;                    /* own: tasks popped that had ended unrun */
    int yields;                          /* own: how many times to yield before parking */
};

/* A freed plain task's block, waiting to be reused (pool.c): in a batch of
 * a pool thread, in its pool's stack of batches, or in a submitter's
 * thread-local cache. */
struct cancel__spare {
    struct cancel__spare *next;       /* in the batch, or the cache */
    struct cancel__spare *next_batch; /* in the pool's stack (first block of a batch) */
    uint32_t count;                   /* blocks in the batch (first block) */
};

struct cancel_pool {
    /* Producers' line. */
    _Alignas(CANCEL__CACHELINE) struct cancel__qnode *_Atomic tail;
    /* Consumers' line. */
    _Alignas(CANCEL__CACHELINE) _Atomic uint32_t qlock; /* the consumer try-lock */
    struct cancel__qnode *_Atomic head;                 /* under qlock (atomic for peeks) */
    struct cancel__qnode stub;
    /* Idle threads: parked or about to, a bit each in idle_mask, counted in
     * nidle (pool.c). */
    _Alignas(CANCEL__CACHELINE) _Atomic uint32_t nidle;
    _Atomic uint32_t exiting; /* threads leave once the queue is empty */
    _Atomic uint64_t *idle_mask; /* r/o pointer into the allocation: (nthreads + 63) / 64 words */
    /* Freed task blocks, a batch per 32 tasks. */
    _Alignas(CANCEL__CACHELINE) struct cancel__spare *_Atomic spare; /* batches of blocks (pool.c) */
    _Atomic uint32_t spare_lock; /* serialises poppers of `spare` and `slabs` */
    struct cancel__slab *_Atomic slabs; /* free record slabs, for the next groups */
    _Atomic uint32_t nslabs;     /* how many (roughly: a cap, not an account) */
    /* Read-mostly. */
    _Alignas(CANCEL__CACHELINE) _Atomic uint32_t closing; /* cancel_pool_free started: start no task */
    _Atomic uint32_t refs;      /* the owner's handle, and one per group */
    cancel_source *src;         /* r/o; freed with the pool's memory */
    const char *name;           /* r/o; in the allocation, or NULL */
    size_t nthreads;            /* r/o */
    struct cancel__worker *workers; /* r/o; in the allocation */
    pthread_mutex_t report_mu;  /* reports read workers' blocked-in words under it */
};

/* ---- tasks ---- */

enum {
    CANCEL__TASK_STATE_MASK = 0xffu,
    CANCEL__TASK_WAITERS = 0x100u, /* someone listed itself in `waiters` (set under the stripe) */
};

/* Every task. Kept small: it is allocated by the submitter and freed by a
 * pool thread, and small blocks are what allocators pass between threads
 * cheaply. What only some tasks need lives in a larger block around it. */
struct cancel_task {
    struct cancel__qnode q;          /* the queue's link; first member */
    _Atomic uint32_t state;          /* cancel_task_state | WAITERS */
    _Atomic uint32_t refs;           /* queue (until run or dropped), handle, group */
    cancel_task_fn *fn;              /* r/o */
    void *arg;                       /* r/o */
    struct cancel_pool *pool;        /* r/o; valid while the task is queued or running */
    struct cancel_group *group;      /* r/o; NULL for a plain task; valid until it ended */
    cancel_token tok;                /* r/o: what fn gets (see pool.c: shared or its own) */
    cancel_source *_Atomic src;      /* its own source, if any; whoever swaps it to NULL frees it */
    struct cancel__waiter *waiters;  /* under cancel__stripe(task) */
    _Atomic int result;              /* written before the state ends (release) */
    bool owned;                      /* r/o: a struct cancel__owned (a source of its own) */
    struct cancel__worker *_Atomic worker; /* the thread that runs it; set before RUNNING */
    const char *_Atomic nested_in;   /* while its thread runs another task inside a wait of
                                        this one: that wait's name */
};

/* A plain task given a token of the caller's: its own source, and a
 * registration that ends it if cancelled while queued. */
struct cancel__owned {
    struct cancel_task t;
    cancel_registration reg; /* on t.src */
};

/* A group task: the task and the group's record of it, kept until the
 * group is freed. Relaxed atomics: reports read them while it runs. */
struct cancel__record {
    struct cancel_task t;
    struct cancel__record *gnext;    /* older task of the group; r/o once listed */
    _Atomic int64_t queued, started, ended; /* cancel_now() */
    _Atomic int64_t cancelled;       /* when its token was cancelled (first writer wins), or
                                        CANCEL__NOT_ASKED */
    _Atomic int64_t cpu_at_request;  /* its thread's CPU clock then, if it was running */
    _Atomic int64_t cpu_at_end;      /* its thread's CPU clock at its return, if asked before */
    const char *_Atomic blocked_at_request; /* what it was blocked in when asked */
    _Atomic int blocked_fd_at_request;
    struct cancel_group *children;   /* groups nested in it; under cancel__tree_mu */
    const char *name;                /* r/o; in its slab, or malloc'd (name_owned), or NULL */
    bool name_owned;                 /* r/o */
    struct cancel__slab *slab;       /* r/o: where it lives */
};

/* Records are carved out of slabs that belong to their group: a spawn
 * takes the next slot with one atomic add instead of a malloc, and a slab
 * goes when the last reference to its last record goes (usually at
 * cancel_group_free; a record still in a pool's queue then keeps it). */
#define CANCEL__SLAB_RECORDS 64
#define CANCEL__SLAB_NAMES (CANCEL__SLAB_RECORDS * 24)
struct cancel__slab {
    struct cancel__slab *next;       /* the group's older slab (or the next free one in the pool) */
    struct cancel_pool *pool;        /* r/o: whose cache it returns to */
    _Atomic uint32_t used;           /* slots handed out (goes past the end once full) */
    _Atomic uint32_t names_used;     /* bytes of `names` handed out (likewise) */
    _Atomic uint32_t live;           /* slots not yet released */
    struct cancel__record records[CANCEL__SLAB_RECORDS];
    char names[CANCEL__SLAB_NAMES];
};

static inline struct cancel__record *cancel__record_of(const struct cancel_task *t)
{
    return (struct cancel__record *)(void *)t; /* group tasks only */
}

static inline cancel_task_state cancel__task_state(uint32_t word)
{
    return (cancel_task_state)(word & CANCEL__TASK_STATE_MASK);
}
static inline bool cancel__task_ended(uint32_t word)
{
    return cancel__task_state(word) >= CANCEL_TASK_COMPLETED;
}

/* ---- groups ---- */

/* Two counters, each on its own cache line so that the spawner and the pool
 * threads do not pass one line back and forth per task: the group has no
 * task left when ended == spawned (ended never passes spawned). `spawned`
 * also counts the spawns in progress (group.c): cancel_group_free waits for
 * them. 2^40 tasks would keep 200 TB of records: a spawn refuses the next
 * one (ENOMEM); 22 bits of spawns in progress hold more threads than Linux
 * can run (its limit on thread ids is 2^22). */
#define CANCEL__COUNT ((UINT64_C(1) << 40) - 1)
#define CANCEL__SPAWNING_ONE (UINT64_C(1) << 40)    /* one spawn in progress */
#define CANCEL__SPAWNING (((UINT64_C(1) << 22) - 1) << 40)
#define CANCEL__SPAWNED_CLOSED (UINT64_C(1) << 62)  /* wait returned: no more spawns */
#define CANCEL__SPAWNED_FREEING (UINT64_C(1) << 63) /* free started: no more spawns */
#define CANCEL__ENDED_WAITERS (UINT64_C(1) << 63)   /* set under cancel__stripe(group) */

struct cancel_group {
    /* The spawners' line. */
    _Alignas(CANCEL__CACHELINE) _Atomic uint64_t spawned; /* tasks spawned | SPAWNING | CLOSED | FREEING */
    struct cancel__record *_Atomic tasks; /* every task ever spawned, newest first */
    struct cancel__slab *_Atomic slab;    /* where records come from: the newest slab */
    /* The line of the threads that end tasks. */
    _Alignas(CANCEL__CACHELINE) _Atomic uint64_t ended; /* tasks ended | WAITERS */
    _Atomic int first_error;         /* the first failure's result; 0: none */
    _Atomic bool any_canceled;
    struct cancel__record *_Atomic first_failed;
    /* The rest. */
    _Alignas(CANCEL__CACHELINE) struct cancel_pool *pool; /* r/o; the group holds a reference */
    cancel_source *src;              /* r/o: the group's token */
    cancel_source *outer;            /* r/o: src's one parent, linked to the parent and the pool */
    cancel_registration reg;         /* on outer: cancel__group_cancelled */
    struct cancel__waiter *waiters;  /* under cancel__stripe(group) */
    _Atomic int64_t created, cancelled, grace;
    /* Nesting, under cancel__tree_mu. */
    struct cancel_group *parent_group;
    struct cancel__record *parent_task;
    struct cancel_group *children;     /* groups nested in the group itself */
    struct cancel_group *sib_next, **sib_pprev;
    struct cancel_group *all_next, **all_pprev; /* every group alive */
    const char *name;                  /* r/o; in the allocation, or NULL */
};

/* ---- pool.c, for group.c ---- */

/* The task the calling thread runs (innermost), or NULL. */
CANCEL_HIDDEN struct cancel_task *cancel__task_current(void);
/* Takes or drops a reference on the pool's memory. */
CANCEL_HIDDEN bool cancel__pool_ref(struct cancel_pool *pool); /* false: it is being freed */
CANCEL_HIDDEN void cancel__pool_unref(struct cancel_pool *pool);
/* Creates, links and queues a task (group tasks: g not NULL, tok = the
 * group's token). Returns 0, ENOMEM or ESHUTDOWN. */
CANCEL_HIDDEN int cancel__task_submit(struct cancel_pool *pool, struct cancel_group *g, cancel_token tok,
                                      cancel_task_fn *fn, void *arg, const char *name,
                                      struct cancel_task **out);
/* Drops one reference on a task. */
CANCEL_HIDDEN void cancel__task_unref(struct cancel_task *t);
/* Releases `n` slots of a slab; the last release frees it. */
CANCEL_HIDDEN void cancel__slab_release(struct cancel__slab *slab, uint32_t n);

/* What a wait waits for. */
struct cancel__waitable {
    bool (*done)(void *obj);                                  /* acquire */
    bool (*subscribe)(void *obj, struct cancel__waiter *w);   /* false: done already */
    void *obj;
    const char *what;                                         /* for the blocked-in word */
};
/* Waits for w->done, helping the calling pool thread's pool meanwhile.
 * Returns 0, ETIMEDOUT, ECANCELED, EINVAL or ENOMEM. */
CANCEL_HIDDEN int cancel__wait(const struct cancel__waitable *w, cancel_token wait_tok, int64_t timeout_ns);

/* Counts n tasks out of the group (pool.c): wakes its waiter at 0. After
 * it returns the group may be gone, unless the caller is the group's own
 * registration. */
CANCEL_HIDDEN void cancel__group_count_out(struct cancel_group *g, uint64_t n);
/* How a group is cancelled (pool.c). Through the group's own calls
 * (cancel_group_cancel, the first failure: err and message for
 * cancel_source_fail; cancel_group_free): cancel__group_cancel notes the
 * moment and what each running task is doing, and ends the queued tasks,
 * then cancels the group's source; the caller must hold the group (its
 * owner, or a task of it still counted). Returns whether this call
 * cancelled it. From outside (the parent token, the pool): the outer
 * source is cancelled first, and its registration, cancel__group_cancelled,
 * does the same before the group's token reads cancelled. */
CANCEL_HIDDEN bool cancel__group_cancel(struct cancel_group *g, int err, const char *message);
CANCEL_HIDDEN void cancel__group_cancelled(void *group);

/* ---- group.c, for report.c ---- */

/* Protects the nesting of groups (parent, children, siblings, the list of
 * live groups) and tasks' `children`. Taken by group creation and free and
 * by reports; never held while user code runs. */
extern CANCEL_HIDDEN pthread_mutex_t cancel__tree_mu;
/* The group's result if it has no task left, else -1. */
CANCEL_HIDDEN int cancel__group_result(const struct cancel_group *g);

#endif /* CANCEL_TASK_INTERNAL_H */
