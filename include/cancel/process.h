/*
 * <cancel/process.h>: cancellation and processes. Two concepts: a child
 * process whose life is tied to a token (Go's exec.CommandContext), and a
 * token that crosses a process boundary (the second part, below).
 *
 * Child processes.
 *
 * cancel_process_spawn starts a program the way posix_spawnp does. From then
 * on the token given to spawn governs the child: once that token is
 * cancelled, the child (by default the whole process group it leads)
 * receives term_signal (SIGTERM), then SIGKILL if it is still there
 * grace_ns (5 s) later. cancel_process_wait waits for the child to end, under
 * a token and a timeout of the waiter's own, and reaps it.
 * cancel_process_free lets go of the child: if it still runs, it is
 * terminated as on cancellation and reaped in the background, so that no
 * zombie is ever left behind.
 *
 *     char *argv[] = {"make", "-j2", NULL};
 *     cancel_process *p;
 *     int err = cancel_process_spawn(tok, "make", argv, NULL, &p);
 *     if (err)
 *         return err;                      // ENOENT: no make on PATH
 *     int status;
 *     err = cancel_process_wait(CANCEL_TOKEN_NONE, p, CANCEL_INFINITE, &status);
 *     cancel_process_free(p);
 *     // tok cancelled meanwhile: err == 0 and
 *     // WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM
 *
 * Signals. Cancellation (and cancel_process_free of a running child, and
 * cancel_process_signal) signals the child's process group, and only while
 * the child is not reaped: until then its id, hence its group's id, cannot
 * be reused by another process. Once it is reaped nothing is signalled any
 * more, so grandchildren that outlive the child are the caller's. Without
 * own_group only the child itself is signalled, through a pidfd.
 * Cancellation and free send SIGCONT right after term_signal, so that a
 * stopped child acts on it at once. The signals are sent from the thread
 * that cancels the token (the library thread, for an asynchronous cancel or
 * a deadline), and the SIGKILL after the grace from the library thread: no
 * thread is needed per process.
 *
 * The child starts with an empty signal mask and every signal at its default
 * disposition, whatever the spawning thread had. It inherits the caller's
 * descriptors as posix_spawn passes them (those without FD_CLOEXEC), never a
 * descriptor of the library (all are made with O_CLOEXEC), and the caller's
 * descriptors are left as they were. A child leading its own group is not
 * in the foreground group of a terminal: it gets SIGTTIN if it reads the
 * terminal (set own_group to false for an interactive child).
 *
 * Reaping. The library reaps its children itself (waitpid on their own id):
 * a program that reaps every child (waitpid(-1, ...), or SIGCHLD set to
 * SIG_IGN or SA_NOCLDWAIT) takes the status away, and cancel_process_wait
 * then reports ECHILD; signalling the group is no longer safe from reuse of
 * the id either, so do not do that while processes of this library live.
 *
 * Reaping in the background. A child still running when it is freed is
 * watched by the library thread (cancel_watch_fd on its pidfd), which reaps
 * it once it ends: no thread of its own. A freed child that ignores
 * term_signal is held (running, then reaped) until its grace ends; with an
 * infinite grace, until it exits by itself. Meanwhile the library thread
 * stays: cancel_quiesce returns EBUSY, and cancel_stats.watched_fds counts
 * it.
 *
 * Descriptors. Each process holds one descriptor (a pidfd) from spawn to
 * free, or until it is reaped in the background. Calls that may need a
 * descriptor, and so may return EMFILE or ENFILE: cancel_process_spawn (the
 * pidfd) and cancel_process_wait (the wait token's descriptor,
 * cancel_token_fd, made once per source). The first watched descriptor
 * makes the library thread an epoll instance and a wake-up descriptor.
 *
 * fork. A process object belongs to the process that spawned it. In a child
 * of fork it is to be freed, which releases the copy and signals nothing;
 * cancellations of the copied token signal nothing there either, and
 * cancel_process_signal returns ESRCH (a wait there could only return
 * ECHILD, once the child ends). Spawning in the child of fork works as
 * anywhere.
 *
 * Requires Linux 5.3 (pidfd_open) and glibc 2.29
 * (posix_spawn_file_actions_addchdir_np). Errors follow <cancel.h>: the
 * cancel_process_* functions return 0 or an error number and leave errno
 * alone; a token that is already cancelled makes a call return ECANCELED
 * before anything else is looked at. EINTR is retried inside every call.
 * The library never uses pthread_cancel; cancel_process_wait blocks in
 * ppoll, which is one of its cancellation points, as posix_spawn and
 * waitpid are.
 *
 * Tokens across processes.
 *
 * A token that crosses a process boundary: the exporting process turns a
 * token into a descriptor, passes it to one other process (inherited through
 * fork/exec, or sent with SCM_RIGHTS), and that process turns it into a
 * source that is cancelled when the token is, with the same cause and the
 * same deadline, and that fails (EPIPE) if every exporting process is gone,
 * so that no orphan keeps working.
 *
 *     // parent                                   // child (exec'd)
 *     int fd = cancel_token_export_fd(tok);       cancel_source *s = cancel_source_new_inherited();
 *     ... spawn with CANCEL_TOKEN_FD=<fd> ...     work(cancel_source_token(s));
 *     close(fd);                                  cancel_source_free(s);
 *
 * Both ends are served by the library thread (epoll inside it): no thread of
 * their own, no system call on any hot path. All of this assumes processes
 * in one time namespace (they share CLOCK_MONOTONIC).
 */
#ifndef CANCEL_PROCESS_H
#define CANCEL_PROCESS_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <cancel.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Child processes tied to a token.
 * ------------------------------------------------------------------------ */

/* A spawned child. Opaque; made by cancel_process_spawn, freed by
 * cancel_process_free. */
typedef struct cancel_process cancel_process;

/* How to start a child. Initialise with CANCEL_PROCESS_OPTIONS_INIT and
 * change what you need: fields appended in later versions start at their
 * defaults (zero or false) in code written against this one. */
typedef struct cancel_process_options {
    int term_signal;   /* sent on cancellation (default SIGTERM); 1..NSIG-1 */
    int64_t grace_ns;  /* then SIGKILL after this (default 5 s); 0: at once;
                          CANCEL_INFINITE: never */
    int stdin_fd, stdout_fd, stderr_fd;
                       /* become the child's 0, 1 and 2, in that order, as a
                          shell applies redirections; -1: inherit (default) */
    const char *cwd;   /* the child's working directory; NULL: inherit (default).
                          A file name with a slash is looked up from it. */
    char *const *envp; /* the child's environment; NULL: the caller's (default).
                          PATH is searched with the caller's PATH either way. */
    bool own_group;    /* the child leads a new process group and signals go to
                          the group (default true) */
    bool share_token;  /* the child inherits the spawn token (default false): a
                          descriptor from cancel_token_export_fd, its number in
                          the child's environment as CANCEL_TOKEN_FD, so that a
                          child written with libcancel calls
                          cancel_source_new_inherited and stops on the same
                          request with the same cause, not only on SIGTERM */
} cancel_process_options;

/* The defaults above, positionally so that C and C++ accept it. */
#define CANCEL_PROCESS_OPTIONS_INIT {SIGTERM, INT64_C(5000000000), -1, -1, -1, NULL, NULL, true, false}

/* Starts `file` with arguments `argv` (NULL-terminated; argv[0] is the
 * program's name), searching PATH as execvp and posix_spawnp do when `file`
 * has no slash, with the options `opts` (NULL: the defaults). On success
 * stores the process in *out and returns 0; the caller owns it and frees it
 * with cancel_process_free. From then on the cancellation of `tok` signals
 * the child as the header's opening comment says; spawn retains what it
 * needs, so `tok`'s source may be freed before the process (a source freed
 * uncancelled simply never cancels the child). If `tok` is cancelled while
 * spawn runs, the child is started and signalled at once; its status tells.
 *
 * Returns, with *out set to NULL:
 *   ECANCELED  `tok` was already cancelled: nothing was started;
 *   EINVAL     out, file or argv NULL, a term_signal outside 1..NSIG-1, a
 *              negative grace_ns other than CANCEL_INFINITE, a descriptor
 *              below -1;
 *   the error of the child's exec, chdir or dup2, as posix_spawnp reports
 *              it: ENOENT (no such file on PATH, or no such cwd), EACCES
 *              (not executable), ENOEXEC (not a format the kernel runs:
 *              no shell is tried), EBADF (a bad descriptor in opts)...;
 *   EAGAIN     no process could be made (RLIMIT_NPROC);
 *   EMFILE, ENFILE  no descriptor for the pidfd (the child was started,
 *              then killed and reaped: nothing is left behind);
 *   ENOMEM; ENOSYS (a kernel without pidfd_open).
 * Thread-safe: spawn from several threads at once. May be called from a
 * callback (it waits for the child's exec, as posix_spawn does). */
CANCEL_API int cancel_process_spawn(cancel_token tok, const char *file, char *const argv[],
                                    const cancel_process_options *opts, cancel_process **out);

/* The child's process id, or -1 for NULL. Once the child is reaped (by a
 * wait, or in the background) the id may belong to another process: do not
 * signal it yourself, use cancel_process_signal. Thread-safe, no side
 * effect. */
CANCEL_API pid_t cancel_process_pid(const cancel_process *p);

/* Waits until the child ends, then reaps it and stores its status in
 * *status (NULL: not wanted) as waitpid gives it (WIFEXITED, WEXITSTATUS,
 * WIFSIGNALED, WTERMSIG...). A child killed because its token was
 * cancelled reports it through *status (WTERMSIG(status) == term_signal,
 * or SIGKILL after the grace): wait returns 0. Once reaped, every later
 * wait returns 0 and the same status at once.
 *
 * `wait_tok` is the waiter's token, not the process's: its cancellation
 * ends the wait with ECANCELED and leaves the child running (cancel the
 * process's token to stop the child). Waiting under the process's own token
 * therefore returns ECANCELED as soon as it is cancelled, before the child
 * has ended: wait again (CANCEL_TOKEN_NONE) for its status. A timeout of 0
 * tries once; CANCEL_INFINITE waits without limit. A wait_tok whose source
 * is freed uncancelled mid-wait is simply no longer listened to.
 *
 * Returns 0; ECANCELED (wait_tok cancelled: it wins over an exited child);
 * ETIMEDOUT; EINVAL (p NULL, or a negative timeout other than
 * CANCEL_INFINITE); ECHILD (someone else reaped the child, see the opening
 * comment, or called in a child of fork); EMFILE, ENFILE or ENOMEM (no
 * descriptor for wait_tok: see cancel_token_fd).
 * Thread-safe: several threads may wait for one process at once; exactly one
 * of them reaps it and all see the same status. Not to be called
 * concurrently with cancel_process_free of the same process. Blocks, so not
 * from a callback (timeout 0 excepted). */
CANCEL_API int cancel_process_wait(cancel_token wait_tok, cancel_process *p, int64_t timeout_ns,
                                   int *status);

/* Sends `sig` to the child's group (to the child alone without own_group),
 * as cancellation does, while the child is not reaped. Returns 0, ESRCH
 * (already reaped: nothing was signalled), EINVAL (p NULL, or sig outside
 * 0..NSIG-1 or unknown to the kernel; 0 tests for existence), EPERM (the
 * child runs as another user now, as a set-user-ID program does). A child that exited but was not reaped
 * yet is still signalled (harmlessly for the child itself; the group's
 * other members receive it). Thread-safe; may be called from a callback. */
CANCEL_API int cancel_process_signal(cancel_process *p, int sig);

/* Releases the process. A child that still runs is terminated as on
 * cancellation (term_signal, SIGKILL after the grace; nothing more if its
 * token had already done so) and reaped in the background by the library
 * thread (see the opening comment), so that it never lingers as a zombie; a
 * child that already exited is reaped here. Its status is lost. If it cannot
 * be watched (no descriptor, or the library thread cannot be started), free
 * sends SIGKILL and waits for the child to end. NULL is a no-op. Not to be called twice, nor
 * concurrently with other calls on the same process. Thread-safe otherwise;
 * may be called from a callback (it waits for nothing but this process's
 * own short callbacks, except in the fallback above). */
CANCEL_API void cancel_process_free(cancel_process *p);

/* ------------------------------------------------------------------------
 * Tokens across processes.
 * ------------------------------------------------------------------------ */

/* Returns a new descriptor (the caller's to close; O_CLOEXEC) through which
 * one other process reads the token (cancel_source_new_from_fd): pass it by
 * fork/exec inheritance (clear O_CLOEXEC in the child, or use
 * cancel_process_options.share_token) or with SCM_RIGHTS; export once per
 * receiving process. It carries the cause (reason, code, message, origin)
 * when the token is cancelled, or the news that its source was freed
 * uncancelled, and the deadline the token has now (cancel_token_deadline;
 * later re-arms are not carried). This process never dies of SIGPIPE for it.
 * A child forked without exec counts as an exporting process too (it holds
 * the exporter's end). Returns -1 with errno EMFILE/ENFILE/ENOMEM (a socket
 * pair, and a duplicate of the token's descriptor, are needed) or EAGAIN
 * (the library thread could not be started). Thread-safe. */
CANCEL_API int cancel_token_export_fd(cancel_token tok);

/* In the receiving process: a new source (the caller's to free) cancelled
 * when the exporting token is, with the same cause (reason, code, message,
 * and the origin's name kept), and armed with the same absolute deadline;
 * cancelled with reason FAILED, code EPIPE, message "exporting process gone"
 * when every exporting process is gone. If the exporting source is freed
 * uncancelled, this source is told and is never cancelled through the
 * descriptor (its own owner may still cancel it). Takes ownership of fd and
 * closes it on every path (it is made close-on-exec at once, so that this
 * process's own children do not hold it). Messages and origins longer than
 * 2000 bytes arrive cut to that. Returns NULL with errno EBADF (fd not open),
 * EPROTO (not an exported token), ENOMEM, EMFILE/ENFILE (descriptors are
 * needed to watch it), or EAGAIN (the library thread could not be started).
 * Thread-safe. */
CANCEL_API cancel_source *cancel_source_new_from_fd(int fd);

/* The source of a token the parent process passed through the environment
 * variable CANCEL_TOKEN_FD (the decimal descriptor number; what
 * cancel_process_options.share_token does); the variable is removed after
 * reading, so call it before starting threads. A never-cancelled source if
 * the variable is not set. NULL with errno EBADF if it names no valid
 * descriptor, else as cancel_source_new_from_fd. */
CANCEL_API cancel_source *cancel_source_new_inherited(void);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_PROCESS_H */
