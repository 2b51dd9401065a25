/*
 * Child processes tied to a token (<cancel/process.h>).
 *
 * Locking and lifetime.
 *
 *  - Each process has a mutex, p->mu. It guards `reaped`, `status`,
 *    `reap_err`, `terminating` and `grace`, and it is held across every
 *    waitpid (always WNOHANG) and every signal sent to the child. That is
 *    what makes signalling safe from id reuse: a signal is sent only under
 *    p->mu after reading `reaped` as false, and the child can only be reaped
 *    under p->mu, so the child (a zombie at worst) still holds its id, and
 *    its group's id, while the signal goes out. Critical sections are a few
 *    stores and at most three non-blocking system calls; no user code runs
 *    under it, and cancellation callbacks take it only briefly, so they
 *    never block.
 *
 *  - The process's token is retained at spawn and released when the object
 *    is released. Two registrations live in the object: `reg` on that token
 *    (on_cancel: the term signal, then the grace timer) and `grace_reg` on
 *    the grace timer's source (on_grace: SIGKILL). The grace timer is a
 *    source with a deadline, made by whoever terminates the child first, so
 *    the SIGKILL comes from the library thread and no thread of ours is
 *    needed for it.
 *
 *  - cancel_process_free first unregisters `reg`, waiting for a running
 *    on_cancel: after that nothing but on_grace can touch the object from
 *    elsewhere, and `grace` no longer changes. The object is released (grace
 *    unregistered, timer freed, token released, pidfd closed, memory freed)
 *    once the child is reaped: at once in free if it already ended, else in
 *    the background.
 *
 *  - Reaping in the background needs no thread of ours: free has the
 *    library thread watch the freed child's pidfd (cancel_watch_fd), and the
 *    handler, which runs there once the child ended, reaps it and releases
 *    the object. Until then the library thread stays (cancel_quiesce says
 *    EBUSY), as for a pending deadline.
 *
 *  - fork: objects copied into a child of fork are recognised by `owner`
 *    (the spawner's process id): there, free only releases the copy and
 *    callbacks signal nothing; the child's library thread watches nothing.
 */
#include <cancel/process.h>

#include "block/block.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* How long to wait before looking again at an ended child that a tracer
 * (ptrace) still holds: its pidfd polls readable, yet waitpid cannot reap
 * it until the tracer lets go. */
#define HELD_RETRY_NS 1000000

struct cancel_process {
    pthread_mutex_t mu;
    /* read-only after spawn */
    pid_t pid;
    pid_t owner;        /* getpid() of the spawner: copies in a child of fork are inert */
    int pidfd;          /* O_CLOEXEC; closed on release */
    int term_signal;
    int64_t grace_ns;
    bool own_group;
    cancel_token tok;   /* retained; released on release */
    cancel_registration reg; /* on tok: on_cancel; unregistered by free */
    /* under mu */
    bool reaped;        /* waitpid returned it (or ECHILD): never signal again */
    bool terminating;   /* term_signal was sent, the grace timer armed */
    int status;         /* once reaped: waitpid's status */
    int reap_err;       /* once reaped: 0, or ECHILD when someone else reaped it */
    cancel_source *grace; /* the grace timer, once armed (then never changes) */
    cancel_registration grace_reg; /* on grace: on_grace */
    /* once freed running: the library thread watches the pidfd */
    cancel_fd_watch reap_watch;
};

static int sys_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0); /* the pidfd is always close-on-exec */
}

static int sys_pidfd_send_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* ------------------------------------------------------------------------
 * Reaping and signalling, under p->mu.
 * ------------------------------------------------------------------------ */

static void try_reap_locked(struct cancel_process *p)
{
    if (p->reaped)
        return;
    int st = 0;
    pid_t r;
    do
        r = waitpid(p->pid, &st, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == p->pid) {
        p->status = st;
        p->reap_err = 0;
        p->reaped = true;
    } else if (r < 0) {
        /* ECHILD: reaped by someone else, or we are a child of fork. */
        p->status = 0;
        p->reap_err = errno;
        p->reaped = true;
    }
}

/* Sends sig, then `also` unless it is 0, to the child's group, or to the
 * child alone. 0, ESRCH, or what the kernel refused with (EPERM: the child
 * took another user's identity, as a set-user-ID program does; EINVAL: a
 * signal number the kernel does not know). */
static int send_locked(struct cancel_process *p, int sig, int also)
{
    if (p->reaped)
        return ESRCH;
    /* The probe (signal 0 through the pidfd) fails once the child is reaped,
     * even by someone else: only then could its group id have been reused.
     * It holds for both signals: under p->mu we reap nothing meanwhile. */
    if (p->own_group && sys_pidfd_send_signal(p->pidfd, 0) == 0 && kill(-p->pid, sig) == 0) {
        if (also)
            kill(-p->pid, also);
        return 0;
    }
    /* Not a group leader, or its group is gone (the child moved to another
     * group, taking every member along): the child alone. */
    if (sys_pidfd_send_signal(p->pidfd, sig) != 0)
        return errno;
    if (also)
        sys_pidfd_send_signal(p->pidfd, also);
    return 0;
}

static bool ours(const struct cancel_process *p)
{
    return p->owner == getpid();
}

static void kill_now(struct cancel_process *p)
{
    pthread_mutex_lock(&p->mu);
    send_locked(p, SIGKILL, 0);
    pthread_mutex_unlock(&p->mu);
}

static void on_grace(void *arg)
{
    struct cancel_process *p = arg;
    int saved = errno;
    if (ours(p))
        kill_now(p);
    errno = saved;
}

/* Sends term_signal and arms the grace timer, once. From on_cancel, or from
 * free (after on_cancel was unregistered): never both at once for the timer,
 * but `terminating` decides under the lock anyway. */
static void terminate(struct cancel_process *p)
{
    if (!ours(p))
        return;
    pthread_mutex_lock(&p->mu);
    bool first = !p->terminating && !p->reaped;
    p->terminating = true;
    /* SIGCONT: a stopped child acts on the term signal only once continued. */
    if (first)
        send_locked(p, p->term_signal, p->term_signal == SIGKILL ? 0 : SIGCONT);
    pthread_mutex_unlock(&p->mu);
    if (!first || p->term_signal == SIGKILL || p->grace_ns == CANCEL_INFINITE)
        return;
    if (p->grace_ns == 0) {
        kill_now(p);
        return;
    }
    /* The grace is a deadline of the library: its callback runs on the
     * library thread. Made outside p->mu, since on_grace takes it. */
    cancel_source *g = cancel_source_new_child(CANCEL_TOKEN_NONE, p->grace_ns, NULL);
    if (!g) {
        kill_now(p); /* no timer: no grace rather than no kill */
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->grace = g;
    pthread_mutex_unlock(&p->mu);
    /* ECANCELED would mean it already fired and ran on_grace inline. */
    (void)cancel_register(cancel_source_token(g), &p->grace_reg, on_grace, p);
}

static void on_cancel(void *arg)
{
    int saved = errno;
    terminate(arg);
    errno = saved;
}

/* Once the child is reaped (or in a child of fork), and nothing but on_grace
 * may still run: nothing of the process is left after this. */
static void release(struct cancel_process *p)
{
    cancel_unregister(&p->grace_reg); /* zeroed if never registered: harmless */
    if (p->grace)
        cancel_source_free(p->grace);
    cancel_token_release(p->tok);
    close(p->pidfd);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* ------------------------------------------------------------------------
 * Spawn.
 * ------------------------------------------------------------------------ */


static bool bad_fd(int fd)
{
    return fd < -1;
}

/* The environment for a child sharing the token: `env` without any
 * CANCEL_TOKEN_FD, plus CANCEL_TOKEN_FD=<fd>. One allocation; NULL if none. */
static char **env_with_token(char *const *env, int fd)
{
    size_t n = 0, bytes = 0;
    for (char *const *e = env; *e; e++, n++)
        bytes += strlen(*e) + 1;
    char **v = malloc((n + 2) * sizeof *v + bytes + 32);
    if (!v)
        return NULL;
    char *text = (char *)(v + n + 2);
    size_t k = 0;
    snprintf(text, 32, "CANCEL_TOKEN_FD=%d", fd);
    v[k++] = text;
    text += strlen(text) + 1;
    for (char *const *e = env; *e; e++) {
        if (strncmp(*e, "CANCEL_TOKEN_FD=", 16) == 0)
            continue;
        size_t len = strlen(*e) + 1;
        memcpy(text, *e, len);
        v[k++] = text;
        text += len;
    }
    v[k] = NULL;
    return v;
}

static int spawn_child(pid_t *pid, const char *file, char *const argv[], const cancel_process_options *o,
                       cancel_token tok)
{
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t fa;
    int err = posix_spawnattr_init(&attr);
    if (err)
        return err;
    err = posix_spawn_file_actions_init(&fa);
    if (err) {
        posix_spawnattr_destroy(&attr);
        return err;
    }
    sigset_t none, all;
    sigemptyset(&none);
    /* Every signal back to its default, glibc's internal ones too:
     * sigfillset leaves those out, and glibc's posix_spawn then leaves them
     * ignored in the child (a program of another C library or runtime may
     * use them). */
    memset(&all, 0xff, sizeof all);
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (o->own_group)
        flags |= POSIX_SPAWN_SETPGROUP;
    err = posix_spawnattr_setflags(&attr, flags);
    if (!err)
        err = posix_spawnattr_setsigmask(&attr, &none);
    if (!err)
        err = posix_spawnattr_setsigdefault(&attr, &all);
    if (!err && o->own_group)
        err = posix_spawnattr_setpgroup(&attr, 0);
    /* dup2 onto the same number clears FD_CLOEXEC in the child (glibc). */
    const int from[3] = {o->stdin_fd, o->stdout_fd, o->stderr_fd};
    for (int i = 0; i < 3 && !err; i++)
        if (from[i] >= 0)
            err = posix_spawn_file_actions_adddup2(&fa, from[i], i);
    if (!err && o->cwd)
        err = posix_spawn_file_actions_addchdir_np(&fa, o->cwd);
    /* share_token: the exported descriptor, above the three standard ones
     * so that no redirection overwrites it, kept open across exec in the
     * child only (dup2 onto itself), and named in its environment. */
    int shared = -1;
    char **env = NULL;
    if (!err && o->share_token) {
        int fd = cancel_token_export_fd(tok);
        shared = fd >= 0 && fd < 3 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : fd;
        if (fd >= 0 && fd < 3)
            close(fd);
        if (shared < 0)
            err = errno;
        else if (!(env = env_with_token(o->envp ? o->envp : environ, shared)))
            err = ENOMEM;
        else
            err = posix_spawn_file_actions_adddup2(&fa, shared, shared);
    }
    if (!err)
        err = posix_spawnp(pid, file, &fa, &attr, argv, env ? env : o->envp ? o->envp : environ);
    if (shared >= 0)
        close(shared); /* the child's copy is the one that counts */
    free(env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    return err;
}

int cancel_process_spawn(cancel_token tok, const char *file, char *const argv[],
                         const cancel_process_options *opts, cancel_process **out)
{
    if (out)
        *out = NULL;
    if (cancel_token_is_requested(tok))
        return ECANCELED;
    const cancel_process_options defaults = CANCEL_PROCESS_OPTIONS_INIT;
    const cancel_process_options *o = opts ? opts : &defaults;
    if (!out || !file || !argv || o->term_signal < 1 || o->term_signal >= NSIG ||
        (o->grace_ns < 0 && o->grace_ns != CANCEL_INFINITE) || bad_fd(o->stdin_fd) ||
        bad_fd(o->stdout_fd) || bad_fd(o->stderr_fd))
        return EINVAL;
    int saved = errno;
    struct cancel_process *p = calloc(1, sizeof *p);
    if (!p) {
        errno = saved;
        return ENOMEM;
    }
    pid_t pid;
    int pidfd = -1;
    int err = spawn_child(&pid, file, argv, o, tok);
    if (!err && (pidfd = sys_pidfd_open(pid)) < 0) {
        /* Unreaped, so its ids are still its own: kill it, reap it. */
        err = errno;
        if (!o->own_group || kill(-pid, SIGKILL) != 0)
            kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
    }
    if (err) {
        free(p);
        errno = saved;
        return err;
    }
    pthread_mutex_init(&p->mu, NULL); /* cannot fail with default attributes */
    p->pid = pid;
    p->owner = getpid();
    p->pidfd = pidfd;
    p->term_signal = o->term_signal;
    p->grace_ns = o->grace_ns;
    p->own_group = o->own_group;
    p->tok = cancel_token_retain(tok);
    /* Cancelled since the check: on_cancel runs here, inline. */
    (void)cancel_register(p->tok, &p->reg, on_cancel, p);
    *out = p;
    errno = saved;
    return 0;
}

pid_t cancel_process_pid(const cancel_process *p)
{
    return p ? p->pid : -1;
}

/* ------------------------------------------------------------------------
 * Wait.
 * ------------------------------------------------------------------------ */

/* true once reaped, with *err (0 or ECHILD) and *status; tries to reap it
 * first if `try`. */
static bool reaped(struct cancel_process *p, bool try, int *err, int *status)
{
    pthread_mutex_lock(&p->mu);
    if (try)
        try_reap_locked(p);
    bool done = p->reaped;
    *err = p->reap_err;
    *status = p->status;
    pthread_mutex_unlock(&p->mu);
    return done;
}

int cancel_process_wait(cancel_token wait_tok, cancel_process *p, int64_t timeout_ns, int *status)
{
    if (cancel_token_is_requested(wait_tok))
        return ECANCELED;
    if (!p)
        return EINVAL;
    int saved = errno;
    struct cancel__until u;
    int err = cancel__until_begin(&u, wait_tok, timeout_ns);
    if (err) {
        errno = saved;
        return err;
    }
    /* The pidfd polls readable once the child has ended; the token's
     * descriptor once it is cancelled (or its source freed uncancelled:
     * then it is dropped from the set, the wait goes on). waitpid is tried
     * only once the pidfd says the child ended: one ppoll and one waitpid
     * per wait, whether the child has ended already or not. */
    struct pollfd fds[2] = {{p->pidfd, POLLIN, 0}, {-1, POLLIN, 0}};
    bool token_fd_asked = false, polled = false, ended = false;
    for (;;) {
        int st;
        if (reaped(p, ended, &err, &st)) {
            if (!err && status)
                *status = st;
            break;
        }
        if (polled) {
            err = cancel__until_check(&u);
            if (err)
                break;
        }
        cancel_token t = cancel__until_token(&u);
        if (!token_fd_asked) {
            token_fd_asked = true;
            if (cancel_token_can_be_canceled(t)) {
                fds[1].fd = cancel_token_fd(t);
                if (fds[1].fd < 0) {
                    err = errno;
                    break;
                }
            }
        }
        struct timespec ts, *left = cancel__until_timespec(&u, &ts);
        /* Ended, yet not reaped: a tracer holds it. Look again every
         * HELD_RETRY_NS rather than spin, still listening to the token. */
        bool held = ended;
        fds[0].fd = held ? -1 : p->pidfd;
        if (held && (!left || ts.tv_sec > 0 || ts.tv_nsec > HELD_RETRY_NS)) {
            ts = (struct timespec){0, HELD_RETRY_NS};
            left = &ts;
        }
        cancel__blocked_enter("cancel_process_wait", p->pidfd);
        int n = ppoll(fds, 2, left, NULL);
        cancel__blocked_leave();
        if (n < 0 && errno != EINTR) {
            err = errno; /* ENOMEM */
            break;
        }
        polled = true;
        ended = n > 0 && fds[0].revents;
        if (n > 0 && fds[1].revents && !cancel_token_is_requested(t))
            fds[1].fd = -1; /* freed uncancelled: it can never end the wait now */
    }
    cancel__until_end(&u);
    errno = saved;
    return err;
}

int cancel_process_signal(cancel_process *p, int sig)
{
    if (!p || sig < 0 || sig >= NSIG)
        return EINVAL;
    if (!ours(p))
        return ESRCH;
    int saved = errno;
    pthread_mutex_lock(&p->mu);
    int err = send_locked(p, sig, 0);
    pthread_mutex_unlock(&p->mu);
    errno = saved;
    return err;
}

/* ------------------------------------------------------------------------
 * Free, and reaping in the background.
 * ------------------------------------------------------------------------ */

/* On the library thread, once a freed child's pidfd is readable. */
static void reap_freed(cancel_fd_watch *w, void *arg)
{
    struct cancel_process *p = arg;
    int err, st;
    if (!reaped(p, true, &err, &st)) {
        /* Ended, but a tracer still holds it (see the wait): look again in
         * a millisecond. Only while a debugger holds a dead child does this
         * sleep on the library thread. */
        struct timespec pause = {0, HELD_RETRY_NS};
        nanosleep(&pause, NULL);
        return;
    }
    cancel_unwatch_fd(w);
    release(p);
}

void cancel_process_free(cancel_process *p)
{
    if (!p)
        return;
    int saved = errno;
    /* Waits for a running on_cancel: then `grace` is settled. */
    cancel_unregister(&p->reg);
    int err, st;
    if (ours(p) && !reaped(p, true, &err, &st)) {
        terminate(p);
        if (!reaped(p, true, &err, &st)) {
            if (cancel_watch_fd(&p->reap_watch, p->pidfd, reap_freed, p) == 0) {
                errno = saved;
                return; /* the library thread reaps and releases it */
            }
            /* Nothing can watch it: end it here. Poll, then reap under the
             * lock, so that on_grace never signals a reaped child. */
            kill_now(p);
            struct pollfd pfd = {p->pidfd, POLLIN, 0};
            struct timespec pause = {0, HELD_RETRY_NS};
            for (;;) {
                (void)poll(&pfd, 1, -1);
                if (reaped(p, true, &err, &st))
                    break;
                nanosleep(&pause, NULL); /* ended, but held by a tracer */
            }
        }
    }
    release(p);
    errno = saved;
}
