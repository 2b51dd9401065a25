/* The internal lock: mutual exclusion and sleeping under contention. */
#include "../check.h"

#include "lock.h"

static _Atomic uint32_t lk;
static long counter;
static void *hammer(void *arg)
{
    long n = (long)(intptr_t)arg;
    for (long i = 0; i < n; i++) {
        cancel__lock(&lk);
        counter++;
        if ((i & 1023) == 0)
            sched_yield(); /* holder preempted: others must sleep, then wake */
        cancel__unlock(&lk);
    }
    return NULL;
}

static void lock_excludes_and_wakes(void)
{
    enum { T = 6 };
    long per = TEST_SCALE(200000);
    pthread_t th[T];
    for (int i = 0; i < T; i++)
        th[i] = test_spawn(hammer, (void *)(intptr_t)per);
    for (int i = 0; i < T; i++)
        test_join(th[i]);
    CHECK_EQ(counter, per * T);
    CHECK_EQ(atomic_load(&lk), 0);
    CHECK_EQ(atomic_load(cancel__sleepers_of(&lk)), 0);
}

int main(void)
{
    RUN(lock_excludes_and_wakes);
    return 0;
}
