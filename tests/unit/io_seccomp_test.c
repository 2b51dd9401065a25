/* What the kernel rarely answers, made to answer it with a seccomp filter in
 * a child process (seccomp_util.h):
 *  - F_SETFL refused: regular files, ttys and FIFOs are read and written
 *    without ever changing the flags of the caller's open file description
 *    (a pty master, which cannot be opened again, is the one that needs
 *    them);
 *  - a write that returns 0: cancel_io_write_all reports EIO instead of
 *    looping for ever;
 *  - connect failing with EAGAIN: passed through for TCP, retried only for
 *    Unix-domain sockets;
 *  - fstat refused: accept and connect on non-blocking sockets make no
 *    per-inode section (the one system call they add is F_GETFL), also in
 *    a child forked while another thread was in the middle of a switch.
 * The accept and connect cases refuse io_uring_setup too (ENOSYS), so that
 * they test the path without a ring, whatever token they are given. */
#include "io_util.h"
#include "seccomp_util.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/un.h>

#define REFUSED ENOTRECOVERABLE /* an errno no real F_SETFL gives */

static char dir[64];

struct feeder {
    int fd;
    _Atomic(struct cancel__blocked *) reader;
};

/* Writes one byte to fd once the reader is blocked in its call. */
static void *feeder_main(void *arg)
{
    struct feeder *f = arg;
    struct cancel__blocked *b;
    while (!(b = atomic_load(&f->reader)) || !atomic_load(&b->what))
        test_sleep_ns(100 * 1000);
    CHECK_EQ(write(f->fd, "z", 1), 1);
    return NULL;
}

/* A read of `rd` that has to wait, fed through `wr` once it waits. */
static void blocked_read(int rd, int wr)
{
    struct feeder f = {wr, NULL};
    pthread_t th = test_spawn(feeder_main, &f);
    cancel_source *s = cancel_source_new();
    atomic_store(&f.reader, cancel__blocked_here());
    char b;
    CHECK_EQ(cancel_io_read(cancel_source_token(s), rd, &b, 1), 1);
    CHECK_EQ(b, 'z');
    test_join(th);
    cancel_source_free(s);
}

/* No ring can be made: accept and connect take the O_NONBLOCK path. */
static void refuse_ring(void)
{
    seccomp_refuse(SYS_io_uring_setup, SECCOMP_ANY_ARG, 0, ENOSYS);
}

static void never_switched_case(void)
{
    char path[96];
    snprintf(path, sizeof path, "%s/file", dir);
    int file = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(file >= 0);
    snprintf(path, sizeof path, "%s/fifo", dir);
    CHECK_EQ(mkfifo(path, 0600), 0);
    int fifo_rd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    int fifo_wr = open(path, O_WRONLY | O_CLOEXEC);
    CHECK(fifo_rd >= 0 && fifo_wr >= 0);
    set_nonblocking(fifo_rd, false);
    int master, slave;
    open_pty(&master, &slave);

    seccomp_refuse(SYS_fcntl, 1, F_SETFL, REFUSED);
    errno = 0;
    CHECK_EQ(fcntl(slave, F_SETFL, O_RDWR), -1);
    CHECK_EQ(errno, REFUSED);
    int open_before = open_fds();

    /* a regular file: twice, the second time through the hint */
    CHECK_EQ(cancel_io_write_all(CANCEL_TOKEN_NONE, file, "hello", 5, NULL), 0);
    CHECK_EQ(cancel_io_write(CANCEL_TOKEN_NONE, file, "world", 5), 5);
    CHECK_EQ(lseek(file, 0, SEEK_SET), 0);
    char buf[16];
    CHECK_EQ(cancel_io_read(CANCEL_TOKEN_NONE, file, buf, sizeof buf), 10);
    CHECK(memcmp(buf, "helloworld", 10) == 0);

    /* a FIFO, both ends, with data there and after a wait */
    CHECK_EQ(cancel_io_write(CANCEL_TOKEN_NONE, fifo_wr, "ab", 2), 2);
    CHECK_EQ(cancel_io_read(CANCEL_TOKEN_NONE, fifo_rd, buf, sizeof buf), 2);
    blocked_read(fifo_rd, fifo_wr);

    /* a tty, both ways: the slave is opened again; the master cannot be
     * (that would make a new pty), so it is the one that is switched */
    CHECK_EQ(cancel_io_write(CANCEL_TOKEN_NONE, slave, "s", 1), 1);
    CHECK_EQ(read(master, buf, 1), 1);
    CHECK_EQ(buf[0], 's');
    CHECK_EQ(write(master, "m", 1), 1);
    CHECK_EQ(cancel_io_read(CANCEL_TOKEN_NONE, slave, buf, 1), 1);
    CHECK_EQ(buf[0], 'm');
    blocked_read(slave, master);
    CHECK_EQ(write(slave, "x", 1), 1);
    errno = 0;
    CHECK_EQ(cancel_io_read(CANCEL_TOKEN_NONE, master, buf, 1), -1);
    CHECK_EQ(errno, REFUSED);

    CHECK_EQ(open_fds(), open_before);
    CHECK(!is_nonblocking(file) && !is_nonblocking(fifo_rd) && !is_nonblocking(fifo_wr));
    CHECK(!is_nonblocking(slave) && !is_nonblocking(master));
}

static void never_switched(void)
{
    run_filtered(never_switched_case);
}

/* write(2) may return 0 for a non-zero length (some file systems and
 * devices do): cancel_io_write passes it on, cancel_io_write_all reports EIO
 * rather than trying again for ever. */
static void write_of_nothing_case(void)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    seccomp_refuse(SYS_pwritev2, 0, (uint32_t)p[1], 0);
    seccomp_refuse(SYS_write, 0, (uint32_t)p[1], 0);
    CHECK_EQ(cancel_io_write(CANCEL_TOKEN_NONE, p[1], "abc", 3), 0);
    size_t done = 99;
    errno = 1234;
    CHECK_EQ(cancel_io_write_all(CANCEL_TOKEN_NONE, p[1], "abc", 3, &done), EIO);
    CHECK_EQ(done, 0);
    CHECK_EQ(errno, 1234);
}

static void write_of_nothing(void)
{
    run_filtered(write_of_nothing_case);
}

/* connect's EAGAIN means a full backlog only for Unix-domain sockets,
 * where the call naps and retries; for TCP (no local port free) it is the
 * answer. */
static void connect_eagain_case(void)
{
    int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int tcp_nb = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int unx = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(tcp >= 0 && tcp_nb >= 0 && unx >= 0);
    refuse_ring();
    seccomp_refuse(SYS_connect, SECCOMP_ANY_ARG, 0, EAGAIN);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    errno = 0;
    CHECK_EQ(cancel_io_connect(CANCEL_TOKEN_NONE, tcp, (struct sockaddr *)&a, sizeof a), -1);
    CHECK_EQ(errno, EAGAIN);
    CHECK_EQ(cancel_io_connect(CANCEL_TOKEN_NONE, tcp_nb, (struct sockaddr *)&a, sizeof a), -1);
    CHECK_EQ(errno, EAGAIN);
    CHECK(!is_nonblocking(tcp));
    /* Unix-domain: retried until the token's deadline */
    struct sockaddr_un u = {.sun_family = AF_UNIX};
    snprintf(u.sun_path, sizeof u.sun_path, "%s/sock", dir);
    cancel_source *s = cancel_source_new_child(CANCEL_TOKEN_NONE, 5 * 1000 * 1000, NULL);
    CHECK_EQ(cancel_io_connect(cancel_source_token(s), unx, (struct sockaddr *)&u, sizeof u), -1);
    CHECK_EQ(errno, ECANCELED);
    CHECK_EQ(cancel_token_cause(cancel_source_token(s)).reason, CANCEL_REASON_TIMEOUT);
    cancel_source_free(s);
}

static void connect_eagain(void)
{
    run_filtered(connect_eagain_case);
}

/* A socket the caller made non-blocking needs only a look at its flags
 * (F_GETFL) while no switch of ours is in progress: no fstat, no section,
 * no pinning duplicate. */
static void refuse_stat(void)
{
#ifdef SYS_fstat
    seccomp_refuse(SYS_fstat, SECCOMP_ANY_ARG, 0, REFUSED);
#endif
#ifdef SYS_newfstatat
    seccomp_refuse(SYS_newfstatat, SECCOMP_ANY_ARG, 0, REFUSED);
#endif
#ifdef SYS_statx
    seccomp_refuse(SYS_statx, SECCOMP_ANY_ARG, 0, REFUSED);
#endif
}

static void nonblocking_sockets_case(void)
{
    struct sockaddr_in a;
    int l = tcp_listener(4, &a);
    set_nonblocking(l, true);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(c >= 0);
    refuse_ring();
    refuse_stat();
    CHECK_EQ(cancel_io_connect(CANCEL_TOKEN_NONE, c, (struct sockaddr *)&a, sizeof a), 0);
    int s = cancel_io_accept(CANCEL_TOKEN_NONE, l, NULL, NULL, SOCK_CLOEXEC);
    CHECK(s >= 0);
    CHECK(is_nonblocking(l) && is_nonblocking(c));
    close(s);
    close(c);
    close(l);
}

static void nonblocking_sockets(void)
{
    run_filtered(nonblocking_sockets_case);
}

/* A thread that writes to a blocking eventfd (a switch of O_NONBLOCK per
 * write), and is held by a signal handler when caught in the middle of
 * one: its switch is then in progress when the process forks. */
static int flip_efd;
static int hold_pipe[2];
static _Atomic bool flipper_stop, flipper_held;

static void hold_if_switched(int sig)
{
    (void)sig;
    int e = errno;
    int fl = fcntl(flip_efd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK) && !atomic_load(&flipper_held)) {
        atomic_store(&flipper_held, true);
        char b;
        while (read(hold_pipe[0], &b, 1) < 0 && errno == EINTR) {
        }
    }
    errno = e;
}

static void *flipper_main(void *arg)
{
    (void)arg;
    uint64_t one = 1;
    while (!atomic_load(&flipper_stop))
        CHECK_EQ(cancel_io_write(CANCEL_TOKEN_NONE, flip_efd, &one, sizeof one), (ssize_t)sizeof one);
    return NULL;
}

static void fork_during_switch(void)
{
    flip_efd = eventfd(0, EFD_CLOEXEC);
    CHECK(flip_efd >= 0);
    CHECK_EQ(pipe2(hold_pipe, O_CLOEXEC), 0);
    struct sigaction sa = {0};
    sa.sa_handler = hold_if_switched;
    sigemptyset(&sa.sa_mask);
    CHECK_EQ(sigaction(SIGUSR2, &sa, NULL), 0);
    struct sockaddr_in a;
    int l = tcp_listener(4, &a);
    set_nonblocking(l, true);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(c >= 0);
    CHECK_EQ(connect(c, (struct sockaddr *)&a, sizeof a), 0);

    pthread_t th = test_spawn(flipper_main, NULL);
    while (!atomic_load(&flipper_held)) {
        pthread_kill(th, SIGUSR2);
        sched_yield();
    }
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        /* The switching thread is not here, and its switch is not ours: a
         * non-blocking listener is still trusted after one F_GETFL. */
        refuse_ring();
        refuse_stat();
        int s = cancel_io_accept(CANCEL_TOKEN_NONE, l, NULL, NULL, SOCK_CLOEXEC);
        if (s < 0)
            fprintf(stderr, "accept in the child: %s\n", strerror(errno));
        _exit(s >= 0 ? 0 : 1);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        CHECK_EQ(errno, EINTR);
    atomic_store(&flipper_stop, true);
    CHECK_EQ(write(hold_pipe[1], "x", 1), 1);
    test_join(th);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(c);
    close(l);
    close(hold_pipe[0]);
    close(hold_pipe[1]);
    close(flip_efd);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/cancel-io-XXXXXX");
    CHECK(mkdtemp(dir));
    RUN(never_switched);
    RUN(write_of_nothing);
    RUN(connect_eagain);
    RUN(nonblocking_sockets);
    RUN(fork_during_switch);
    char path[96];
    snprintf(path, sizeof path, "%s/file", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/fifo", dir);
    unlink(path);
    rmdir(dir);
    return 0;
}
