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
 *    once the child is reaped: at once in free if it already ended, else by
 *    the reaper.
 *
 *  - The reaper: one thread, started on demand by free and gone when it has
 *    nothing left, waits with epoll on the pidfds of freed children that
 *    still run. `reaper_mu` guards the list of those children and the
 *    thread's existence; the thread and the epoll set are made with the
 *    first child on the list (its pidfd added before the thread starts, so
 *    the thread never waits on an empty set), and the thread leaves, closing
 *    the set, when it finds the list empty under reaper_mu. p->mu and
 *    reaper_mu are never held together. The thread is detached: nothing
 *    waits for it, and it leaves nothing behind.
 *
 *  - fork: handlers hold reaper_mu across fork; the child forgets the
 *    parent's freed children (closing its copies of their descriptors) and
 *    the reaper, which does not exist there. Objects copied into the child
 *    are recognised by `owner` (the spawner's process id): there, free only
 *    releases the copy and callbacks signal nothing.
 */
#include <cancel/process.h>

#include "block/block.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
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
    /* under reaper_mu, while on the reaper's list */
    struct cancel_process *next;
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
 * child alone. 0 or ESRCH. */
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
        return ESRCH;
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

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void atfork_setup(void);

static bool bad_fd(int fd)
{
    return fd < -1;
}

static int spawn_child(pid_t *pid, const char *file, char *const argv[], const cancel_process_options *o)
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
    if (!err)
        err = posix_spawnp(pid, file, &fa, &attr, argv, o->envp ? o->envp : environ);
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
    pthread_once(&atfork_once, atfork_setup);
    struct cancel_process *p = calloc(1, sizeof *p);
    if (!p) {
        errno = saved;
        return ENOMEM;
    }
    pid_t pid;
    int pidfd = -1;
    int err = spawn_child(&pid, file, argv, o);
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
 * Free and the reaper.
 * ------------------------------------------------------------------------ */

static pthread_mutex_t reaper_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cancel_process *orphans; /* under reaper_mu: freed, still running */
static int reaper_ep = -1;             /* under reaper_mu: the epoll set while the thread lives */

static void *reaper_main(void *arg)
{
    int ep = (int)(intptr_t)arg;
    struct epoll_event ev[16];
    for (;;) {
        int n = epoll_wait(ep, ev, 16, -1);
        bool held = false;
        for (int i = 0; i < n; i++) {
            struct cancel_process *p = ev[i].data.ptr;
            int err, st;
            if (!reaped(p, true, &err, &st)) {
                held = true; /* ended, but a tracer holds it (see the wait) */
                continue;
            }
            epoll_ctl(ep, EPOLL_CTL_DEL, p->pidfd, NULL);
            pthread_mutex_lock(&reaper_mu);
            struct cancel_process **pp = &orphans;
            while (*pp != p)
                pp = &(*pp)->next;
            *pp = p->next;
            pthread_mutex_unlock(&reaper_mu);
            release(p);
        }
        if (held) {
            struct timespec pause = {0, HELD_RETRY_NS};
            nanosleep(&pause, NULL);
        }
        pthread_mutex_lock(&reaper_mu);
        if (!orphans) {
            /* The next free starts a new thread with a new set. */
            reaper_ep = -1;
            close(ep);
            pthread_detach(pthread_self());
            pthread_mutex_unlock(&reaper_mu);
            return NULL;
        }
        pthread_mutex_unlock(&reaper_mu);
    }
}

/* Puts p on the reaper's list; false if no reaper could take it. */
static bool hand_to_reaper(struct cancel_process *p)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
    bool ok = false;
    pthread_mutex_lock(&reaper_mu);
    if (reaper_ep >= 0) {
        ok = epoll_ctl(reaper_ep, EPOLL_CTL_ADD, p->pidfd, &ev) == 0;
    } else {
        int ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, p->pidfd, &ev) == 0) {
            pthread_t t;
            ok = cancel__thread_start(&t, reaper_main, (void *)(intptr_t)ep, "cancel-reaper") == 0;
        }
        if (ok)
            reaper_ep = ep;
        else if (ep >= 0)
            close(ep);
    }
    if (ok) {
        p->next = orphans;
        orphans = p;
    }
    pthread_mutex_unlock(&reaper_mu);
    return ok;
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
            if (hand_to_reaper(p)) {
                errno = saved;
                return; /* the reaper owns it now */
            }
            /* No reaper: end it here. Poll, then reap under the lock, so
             * that on_grace never signals a reaped child. */
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

/* ------------------------------------------------------------------------
 * fork
 * ------------------------------------------------------------------------ */

static void atfork_prepare(void)
{
    pthread_mutex_lock(&reaper_mu);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&reaper_mu);
}

static void atfork_child(void)
{
    /* The parent's freed children and its reaper are not this process's:
     * close our copies of their descriptors and forget them. */
    for (struct cancel_process *p = orphans; p; p = p->next)
        close(p->pidfd);
    orphans = NULL;
    if (reaper_ep >= 0)
        close(reaper_ep);
    reaper_ep = -1;
    pthread_mutex_unlock(&reaper_mu);
}

static void atfork_setup(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}
