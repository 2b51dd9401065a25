/* <cancel/process.h>: what cancellation and free do to a child: the term
 * signal, the grace and SIGKILL, the process group, never a reaped child,
 * and no zombie ever. */
#include "process_util.h"

static int spawn_sleep(cancel_token tok, const cancel_process_options *base, cancel_process **p)
{
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    if (base)
        o = *base;
    quiet_defaults(&o);
    char *argv[] = {"sleep", "1000", NULL};
    return cancel_process_spawn(tok, "sleep", argv, &o, p);
}

static void cancelled_while_waiting(void)
{
    cancel_source *s = cancel_source_new();
    cancel_process *p;
    CHECK_EQ(spawn_sleep(cancel_source_token(s), NULL, &p), 0);
    struct waiter w = {CANCEL_TOKEN_NONE, p, PATIENT, NULL, -1, -1};
    pthread_t t = start_waiter(&w);
    cancel_source_cancel(s);
    test_join(t);
    CHECK_EQ(w.result, 0);
    CHECK(WIFSIGNALED(w.status) && WTERMSIG(w.status) == SIGTERM);
    cancel_process_free(p);
    cancel_source_free(s);
}

static void cancelled_then_waited_and_other_signal(void)
{
    /* the source may go before the process: spawn retained the token */
    cancel_source *s = cancel_source_new();
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.term_signal = SIGINT;
    cancel_process *p;
    CHECK_EQ(spawn_sleep(cancel_source_token(s), &o, &p), 0);
    cancel_source_cancel_async(s);
    cancel_source_free(s);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT);
    CHECK_EQ(cancel_process_signal(p, SIGTERM), ESRCH); /* reaped: nothing is signalled */
    cancel_process_free(p);
}

static void source_freed_uncancelled_never_cancels(void)
{
    cancel_source *s = cancel_source_new();
    int in[2];
    make_pipe(in);
    cancel_process *p = spawn_sh(cancel_source_token(s), "read x; exit 2", in[0], -1, NULL);
    close(in[0]);
    cancel_source_free(s);
    CHECK(write(in[1], "go\n", 3) == 3);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    cancel_process_free(p);
    close(in[1]);
}

/* A child that ignores SIGTERM: `ready` once the trap is set. */
static cancel_process *spawn_stubborn(cancel_token tok, int64_t grace, int *out_rd)
{
    int out[2];
    make_pipe(out);
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.grace_ns = grace;
    cancel_process *p = spawn_sh(tok, "trap '' TERM; echo ready; exec sleep 1000", -1, out[1], &o);
    close(out[1]);
    char line[32];
    CHECK(read_line(out[0], line, sizeof line));
    CHECK_STR(line, "ready");
    *out_rd = out[0];
    return p;
}

static void stubborn_child_killed_after_grace(void)
{
    cancel_source *s = cancel_source_new();
    int rd;
    cancel_process *p = spawn_stubborn(cancel_source_token(s), 50 * MS, &rd);
    cancel_source_cancel(s);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    cancel_process_free(p);
    cancel_source_free(s);
    close(rd);
}

/* The grace follows the manual clock: not killed a moment before it ends. */
static void grace_on_the_manual_clock(void)
{
    cancel_clock_use_manual(true);
    cancel_source *s = cancel_source_new();
    int rd;
    cancel_process *p = spawn_stubborn(cancel_source_token(s), SEC, &rd);
    cancel_source_cancel(s);
    cancel_clock_advance(SEC - 1); /* due deadlines' callbacks have run when it returns */
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, 0, NULL), ETIMEDOUT); /* SIGTERM ignored */
    cancel_clock_advance(1);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    cancel_process_free(p);
    cancel_source_free(s);
    close(rd);
    cancel_clock_use_manual(false);
}

static void grace_zero_and_sigkill_term(void)
{
    cancel_source *s = cancel_source_new();
    int rd;
    cancel_process *p = spawn_stubborn(cancel_source_token(s), 0, &rd);
    cancel_source_cancel(s);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    cancel_process_free(p);
    cancel_source_free(s);
    close(rd);

    s = cancel_source_new();
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.term_signal = SIGKILL;
    o.grace_ns = CANCEL_INFINITE;
    CHECK_EQ(spawn_sleep(cancel_source_token(s), &o, &p), 0);
    cancel_source_cancel(s);
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    cancel_process_free(p);
    cancel_source_free(s);
}

/* A stopped child acts on the term signal at once: SIGCONT follows it. */
static void stopped_child_is_terminated(void)
{
    cancel_source *s = cancel_source_new();
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.grace_ns = CANCEL_INFINITE; /* nothing but the term signal can end it */
    cancel_process *p;
    CHECK_EQ(spawn_sleep(cancel_source_token(s), &o, &p), 0);
    CHECK_EQ(cancel_process_signal(p, SIGSTOP), 0);
    siginfo_t si;
    CHECK(waitid(P_PID, (id_t)cancel_process_pid(p), &si, WSTOPPED | WNOWAIT) == 0);
    cancel_source_cancel(s);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENCE_MS * MS, &st), 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
    cancel_process_free(p);
    cancel_source_free(s);
}

/* Reads the grandchild's pid line, then (later) the signal it got first. */
static int read_int_line(int fd)
{
    char line[32];
    CHECK(read_line(fd, line, sizeof line));
    return atoi(line);
}

static void grandchildren_get_the_signal(void)
{
    cancel_source *s = cancel_source_new();
    int out[2];
    make_pipe(out);
    cancel_process *p = spawn_helper(cancel_source_token(s), "group", "stay", out[1], NULL);
    close(out[1]);
    int g = read_int_line(out[0]);
    CHECK(g > 0);
    cancel_source_cancel(s);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
    CHECK_EQ(read_int_line(out[0]), SIGTERM); /* the grandchild got it through the group */
    cancel_process_free(p);
    cancel_source_free(s);
    close(out[0]);
}

/* Once the child is reaped, cancellation signals nothing: the grandchild
 * left in its group would report SIGTERM before the SIGRTMIN we send it
 * afterwards (the lower number is taken first), had it been sent. */
static void reaped_child_is_never_signalled(void)
{
    cancel_source *s = cancel_source_new();
    int out[2];
    make_pipe(out);
    cancel_process *p = spawn_helper(cancel_source_token(s), "group", "exit", out[1], NULL);
    close(out[1]);
    int g = read_int_line(out[0]);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cancel_source_cancel(s);                          /* runs the callback here, now */
    CHECK_EQ(cancel_process_signal(p, SIGTERM), ESRCH); /* and this would signal too */
    cancel_process_free(p);
    CHECK(kill(g, SIGRTMIN) == 0);
    CHECK_EQ(read_int_line(out[0]), SIGRTMIN);
    cancel_source_free(s);
    close(out[0]);
}

/* Without own_group only the child is signalled: its grandchild, in our own
 * group, is left alone. */
static void without_group_only_the_child(void)
{
    cancel_source *s = cancel_source_new();
    int out[2];
    make_pipe(out);
    cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
    o.own_group = false;
    cancel_process *p = spawn_helper(cancel_source_token(s), "group", "stay", out[1], &o);
    close(out[1]);
    int g = read_int_line(out[0]);
    cancel_source_cancel(s);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
    CHECK(kill(g, SIGRTMIN) == 0);
    CHECK_EQ(read_int_line(out[0]), SIGRTMIN);
    cancel_process_free(p);
    cancel_source_free(s);
    close(out[0]);
}

static void signal_function(void)
{
    cancel_process *p;
    CHECK_EQ(spawn_sleep(CANCEL_TOKEN_NONE, NULL, &p), 0);
    CHECK_EQ(cancel_process_signal(p, 0), 0);
    CHECK_EQ(cancel_process_signal(p, SIGUSR1), 0);
    int st;
    CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGUSR1);
    CHECK_EQ(cancel_process_signal(p, 0), ESRCH);
    cancel_process_free(p);
}

/* ---- free: no zombie ever, nothing left behind ---- */

static void free_exited_unwaited(void)
{
    cancel_process *p;
    char *argv[] = {"true", NULL};
    CHECK_EQ(cancel_process_spawn(CANCEL_TOKEN_NONE, "true", argv, NULL, &p), 0);
    /* wait for the exit without reaping, then free */
    siginfo_t si;
    CHECK(waitid(P_PID, (id_t)cancel_process_pid(p), &si, WEXITED | WNOWAIT) == 0);
    int z;
    CHECK_EQ(count_children(&z), 1);
    CHECK_EQ(z, 1);
    cancel_process_free(p);
    CHECK_EQ(count_children(NULL), 0); /* reaped in free itself */
}

static void free_running(void)
{
    cancel_process *p[8];
    for (int i = 0; i < 8; i++) {
        cancel_process_options o = CANCEL_PROCESS_OPTIONS_INIT;
        o.own_group = i % 2 == 0;
        CHECK_EQ(spawn_sleep(CANCEL_TOKEN_NONE, &o, &p[i]), 0);
    }
    for (int i = 0; i < 8; i++)
        cancel_process_free(p[i]);
    wait_no_children();  /* terminated and reaped in the background */
    wait_no_reaper(); /* and the reaper has gone */
}

static void free_stubborn_held_until_grace(void)
{
    int rd;
    cancel_process *p = spawn_stubborn(CANCEL_TOKEN_NONE, 50 * MS, &rd);
    cancel_process_free(p);
    wait_no_children(); /* SIGKILL after the grace, then reaped */
    wait_no_reaper();
    close(rd);

    /* With no grace at all it is held until it ends by itself. */
    p = spawn_stubborn(CANCEL_TOKEN_NONE, CANCEL_INFINITE, &rd);
    pid_t pid = cancel_process_pid(p);
    cancel_process_free(p);
    CHECK_EQ(count_children(NULL), 1);
    CHECK_EQ(watched(), 1); /* the library thread holds it, no thread of ours */
    CHECK(kill(pid, SIGKILL) == 0); /* still unreaped: the id is still its own */
    wait_no_children();
    wait_no_reaper();
    close(rd);
}

static void free_after_cancel_during_grace(void)
{
    cancel_source *s = cancel_source_new();
    int rd;
    cancel_process *p = spawn_stubborn(cancel_source_token(s), 50 * MS, &rd);
    cancel_source_cancel(s); /* SIGTERM (ignored), grace armed */
    cancel_process_free(p);  /* handed over; SIGKILL comes when the grace ends */
    cancel_source_free(s);
    wait_no_children();
    close(rd);
}

/* free from a cancellation callback of the process's own token, before the
 * process's own callback has run (callbacks run newest first). */
static cancel_process *freed_in_callback;
static void free_cb(void *arg)
{
    (void)arg;
    cancel_process_free(freed_in_callback);
}

static void free_from_a_callback(void)
{
    cancel_source *s = cancel_source_new();
    CHECK_EQ(spawn_sleep(cancel_source_token(s), NULL, &freed_in_callback), 0);
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, free_cb, NULL), 0);
    cancel_source_cancel(s);
    wait_no_children();
    cancel_source_free(s);
}

/* Cancellation racing spawn: either nothing is started (ECANCELED) or the
 * child is started and then signalled; never a child left behind. */
struct racer {
    cancel_source *s;
    uint64_t rng;
    test_gate go;
};
static void *race_cancel(void *arg)
{
    struct racer *r = arg;
    test_gate_wait(&r->go);
    test_jitter(&r->rng, 20000);
    cancel_source_cancel(r->s);
    return NULL;
}

static void cancel_races_spawn(void)
{
    uint64_t rng = 12345;
    int spawned = 0, refused = 0;
    for (int i = 0; i < TEST_SCALE(200) + 10; i++) {
        struct racer r = {cancel_source_new(), rng + (uint64_t)i, TEST_GATE_INIT};
        pthread_t t = test_spawn(race_cancel, &r);
        cancel_process *p;
        test_gate_open(&r.go);
        test_jitter(&rng, 1500000); /* the thread takes a while to wake */
        int err = spawn_sleep(cancel_source_token(r.s), NULL, &p);
        if (err == 0) {
            spawned++;
            int st;
            CHECK_EQ(cancel_process_wait(CANCEL_TOKEN_NONE, p, PATIENT, &st), 0);
            CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
            cancel_process_free(p);
        } else {
            CHECK_EQ(err, ECANCELED);
            refused++;
        }
        test_join(t);
        cancel_source_free(r.s);
    }
    fprintf(stderr, "   %d spawned then cancelled, %d refused\n", spawned, refused);
    CHECK_EQ(count_children(NULL), 0);
}

int main(int argc, char **argv)
{
    helper_dispatch(argc, argv);
    RUN(cancelled_while_waiting);
    RUN(cancelled_then_waited_and_other_signal);
    RUN(source_freed_uncancelled_never_cancels);
    RUN(stubborn_child_killed_after_grace);
    RUN(grace_on_the_manual_clock);
    RUN(grace_zero_and_sigkill_term);
    RUN(stopped_child_is_terminated);
    RUN(grandchildren_get_the_signal);
    RUN(reaped_child_is_never_signalled);
    RUN(without_group_only_the_child);
    RUN(signal_function);
    RUN(free_exited_unwaited);
    RUN(free_running);
    RUN(free_stubborn_held_until_grace);
    RUN(free_after_cancel_during_grace);
    RUN(free_from_a_callback);
    RUN(cancel_races_spawn);
    int zombies;
    CHECK_EQ(count_children(&zombies), 0);
    CHECK_EQ(zombies, 0);
    return 0;
}
