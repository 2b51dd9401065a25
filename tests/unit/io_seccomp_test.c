/* What the kernel rarely answers, made to answer it with a seccomp filter in
 * a child process (seccomp_util.h):
 *  - F_SETFL refused: regular files, ttys and FIFOs are read and written
 *    without ever changing the flags of the caller's open file description
 *    (a pty master, which cannot be opened again, is the one that needs
 *    them). */
#include "io_util.h"
#include "seccomp_util.h"

#include <sys/stat.h>

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

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/cancel-io-XXXXXX");
    CHECK(mkdtemp(dir));
    RUN(never_switched);
    char path[96];
    snprintf(path, sizeof path, "%s/file", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/fifo", dir);
    unlink(path);
    rmdir(dir);
    return 0;
}
