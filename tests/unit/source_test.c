/* Sources and tokens: check, cancel, fail, causes, names, lifetime. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>

static void token_is_one_pointer(void)
{
    CHECK_EQ(sizeof(cancel_token), sizeof(void *));
    cancel_token none = CANCEL_TOKEN_NONE;
    CHECK(!cancel_token_is_requested(none));
    CHECK(!cancel_token_can_be_canceled(none));
    CHECK_EQ(cancel_token_check(none), 0);
    CHECK_EQ(cancel_token_cause(none).reason, CANCEL_REASON_NONE);
    cancel_token zero;
    memset(&zero, 0, sizeof zero);
    CHECK(!cancel_token_can_be_canceled(zero));
    CHECK(cancel_token_retain(none).cancel__impl == NULL);
    cancel_token_release(none);
    CHECK(cancel_source_token(NULL).cancel__impl == NULL);
}

static void new_source_is_live(void)
{
    cancel_source *s = cancel_source_new();
    CHECK(s);
    cancel_token t = cancel_source_token(s);
    CHECK(!cancel_token_is_requested(t));
    CHECK(cancel_token_can_be_canceled(t));
    CHECK_EQ(cancel_token_check(t), 0);
    cancel_cause c = cancel_token_cause(t);
    CHECK_EQ(c.reason, CANCEL_REASON_NONE);
    CHECK(c.message == NULL && c.origin == NULL);
    cancel_source_free(s);
}

static void cancel_is_idempotent(void)
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    CHECK(cancel_source_cancel(s));
    CHECK(cancel_token_is_requested(t));
    CHECK_EQ(cancel_token_check(t), ECANCELED);
    CHECK(!cancel_source_cancel(s));
    CHECK(!cancel_source_fail(s, EIO, "late"));
    CHECK(!cancel_source_cancel_async(s));
    CHECK_EQ(cancel_source_cancel_after(s, 1000), ECANCELED);
    cancel_cause c = cancel_token_cause(t);
    CHECK_EQ(c.reason, CANCEL_REASON_REQUESTED);
    CHECK_EQ(c.code, 0);
    CHECK(c.message == NULL);
    CHECK(cancel_token_can_be_canceled(t));
    cancel_source_free(s);
}

static void null_source_is_einval(void)
{
    errno = 0;
    CHECK(!cancel_source_cancel(NULL));
    CHECK_EQ(errno, EINVAL);
    errno = 0;
    CHECK(!cancel_source_fail(NULL, 1, "x"));
    CHECK_EQ(errno, EINVAL);
    errno = 0;
    CHECK(!cancel_source_cancel_async(NULL));
    CHECK_EQ(errno, EINVAL);
    errno = 0;
    CHECK(!cancel_source_try_reset(NULL));
    CHECK_EQ(errno, EINVAL);
    CHECK_EQ(cancel_source_cancel_after(NULL, 5), EINVAL);
    CHECK_EQ(cancel_source_set_name(NULL, "x"), EINVAL);
    CHECK(cancel_source_name(NULL) == NULL);
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(NULL, &info), EINVAL);
    CHECK_EQ(cancel_get_stats(NULL), EINVAL);
    cancel_source_free(NULL);
}

static void fail_records_code_and_copies_message(void)
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    char msg[32] = "disk on fire";
    CHECK(cancel_source_fail(s, EIO, msg));
    strcpy(msg, "overwritten");
    cancel_cause c = cancel_token_cause(t);
    CHECK_EQ(c.reason, CANCEL_REASON_FAILED);
    CHECK_EQ(c.code, EIO);
    CHECK_STR(c.message, "disk on fire");
    CHECK(!cancel_source_cancel(s));
    CHECK_STR(cancel_token_cause(t).message, "disk on fire");
    cancel_source_free(s);

    s = cancel_source_new();
    CHECK(cancel_source_fail(s, 42, NULL));
    c = cancel_token_cause(cancel_source_token(s));
    CHECK_EQ(c.reason, CANCEL_REASON_FAILED);
    CHECK_EQ(c.code, 42);
    CHECK(c.message == NULL);
    cancel_source_free(s);
}

static void names_appear_as_origin(void)
{
    cancel_source *s = cancel_source_new();
    char name[16] = "fetcher";
    CHECK_EQ(cancel_source_set_name(s, name), 0);
    strcpy(name, "changed");
    CHECK_STR(cancel_source_name(s), "fetcher");
    CHECK_EQ(cancel_source_set_name(s, "again"), EBUSY);
    CHECK_EQ(cancel_source_set_name(s, NULL), EINVAL);
    CHECK(cancel_source_cancel(s));
    cancel_cause c = cancel_token_cause(cancel_source_token(s));
    CHECK_STR(c.origin, "fetcher");
    cancel_source_free(s);
}

static void retained_token_outlives_source(void)
{
    /* cancelled, then freed: the retained token still reports it */
    cancel_source *s = cancel_source_new();
    cancel_source_set_name(s, "gone");
    CHECK(cancel_source_fail(s, ETIMEDOUT, "why"));
    cancel_token t = cancel_token_retain(cancel_source_token(s));
    cancel_source_free(s);
    CHECK(cancel_token_is_requested(t));
    CHECK(cancel_token_can_be_canceled(t));
    cancel_cause c = cancel_token_cause(t);
    CHECK_EQ(c.reason, CANCEL_REASON_FAILED);
    CHECK_STR(c.message, "why");
    CHECK_STR(c.origin, "gone");
    CHECK(cancel_token_wait(t, CANCEL_INFINITE));
    cancel_token_release(t);

    /* freed uncancelled: never cancelled any more */
    s = cancel_source_new();
    t = cancel_token_retain(cancel_source_token(s));
    cancel_token t2 = cancel_token_retain(t);
    cancel_source_free(s);
    CHECK(!cancel_token_is_requested(t));
    CHECK(!cancel_token_can_be_canceled(t));
    CHECK(!cancel_token_wait(t, CANCEL_INFINITE));
    CHECK_EQ(cancel_token_check(t), 0);
    cancel_registration r;
    int ran = 0;
    CHECK_EQ(cancel_register(t, &r, test_never, &ran), 0);
    CHECK(!cancel_unregister(&r));
    cancel_token_release(t);
    CHECK(!cancel_token_can_be_canceled(t2));
    cancel_token_release(t2);
}

static void free_does_not_cancel_or_run_callbacks(void)
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(s));
    cancel_registration r;
    CHECK_EQ(cancel_register(t, &r, test_never, NULL), 0);
    cancel_source_free(s);
    CHECK(!cancel_token_is_requested(t));
    CHECK(!cancel_unregister(&r)); /* inert: harmless */
    CHECK(!cancel_unregister_nowait(&r));
    cancel_token_release(t);

    /* without any retained token either: unregister after free is harmless */
    s = cancel_source_new();
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_never, NULL), 0);
    cancel_source_free(s);
    CHECK(!cancel_unregister(&r));
}

static void reason_names(void)
{
    CHECK_STR(cancel_reason_name(CANCEL_REASON_NONE), "none");
    CHECK_STR(cancel_reason_name(CANCEL_REASON_REQUESTED), "requested");
    CHECK_STR(cancel_reason_name(CANCEL_REASON_TIMEOUT), "timeout");
    CHECK_STR(cancel_reason_name(CANCEL_REASON_FAILED), "failed");
    CHECK_STR(cancel_reason_name(CANCEL_REASON_SIGNAL), "signal");
    CHECK_STR(cancel_reason_name((cancel_reason)99), "unknown");
}

/* Exactly one of many concurrent cancel/fail calls wins. */
static cancel_source *race_src;
static _Atomic int race_wins;
static test_gate race_gate = TEST_GATE_INIT;
static void *race_cancel(void *arg)
{
    test_gate_wait(&race_gate);
    bool won = ((intptr_t)arg % 2) ? cancel_source_fail(race_src, (int)(intptr_t)arg, "f")
                                   : cancel_source_cancel(race_src);
    if (won)
        atomic_fetch_add(&race_wins, 1);
    CHECK(cancel_token_is_requested(cancel_source_token(race_src)));
    return NULL;
}
static void exactly_one_canceller_wins(void)
{
    for (int round = 0; round < TEST_SCALE(200); round++) {
        race_src = cancel_source_new();
        atomic_store(&race_wins, 0);
        race_gate.open = 0;
        pthread_t th[4];
        for (intptr_t i = 0; i < 4; i++)
            th[i] = test_spawn(race_cancel, (void *)i);
        test_gate_open(&race_gate);
        for (int i = 0; i < 4; i++)
            test_join(th[i]);
        CHECK_EQ(atomic_load(&race_wins), 1);
        cancel_cause c = cancel_token_cause(cancel_source_token(race_src));
        if (c.reason == CANCEL_REASON_FAILED) {
            CHECK(c.code % 2 == 1);
            CHECK_STR(c.message, "f");
        } else {
            CHECK_EQ(c.reason, CANCEL_REASON_REQUESTED);
            CHECK_EQ(c.code, 0);
            CHECK(c.message == NULL);
        }
        cancel_source_free(race_src);
    }
}

int main(void)
{
    RUN(token_is_one_pointer);
    RUN(new_source_is_live);
    RUN(cancel_is_idempotent);
    RUN(null_source_is_einval);
    RUN(fail_records_code_and_copies_message);
    RUN(names_appear_as_origin);
    RUN(retained_token_outlives_source);
    RUN(free_does_not_cancel_or_run_callbacks);
    RUN(reason_names);
    RUN(exactly_one_canceller_wins);
    return 0;
}
