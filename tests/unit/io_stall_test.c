/* A transfer that stalls inside its O_NONBLOCK switch (the caller's buffer
 * faults, and the fault is served late, as FUSE or NFS may serve it):
 *  - it holds up nothing but switches of its own inode: not an accept on
 *    another descriptor, not fork;
 *  - when the caller's descriptor number is closed and reused meanwhile, the
 *    flags are restored on the original open file description, never on the
 *    newcomer.
 * The stall is a page registered with userfaultfd, whose fault the test
 * serves when it is done; the fault's report is the positive signal that
 * the writer is inside its transfer. Without the privilege for userfaultfd
 * (CAP_SYS_PTRACE, vm.unprivileged_userfaultfd, or /dev/userfaultfd) the
 * test is skipped. */
#include "io_util.h"

#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

struct stall {
    int uffd;
    char *page;
    size_t size;
};

/* A page whose first touch stalls until stall_release; false when
 * userfaultfd is not allowed here. */
static bool stall_new(struct stall *s)
{
    s->size = (size_t)sysconf(_SC_PAGESIZE);
    s->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
#ifdef USERFAULTFD_IOC_NEW
    if (s->uffd < 0) {
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev >= 0) {
            s->uffd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
            close(dev);
        }
    }
#endif
    if (s->uffd < 0)
        return false;
    struct uffdio_api api = {.api = UFFD_API};
    CHECK_EQ(ioctl(s->uffd, UFFDIO_API, &api), 0);
    s->page = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(s->page != MAP_FAILED);
    struct uffdio_register reg = {.range = {(uintptr_t)s->page, s->size}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(s->uffd, UFFDIO_REGISTER, &reg) != 0) {
        munmap(s->page, s->size);
        close(s->uffd);
        return false;
    }
    return true;
}

/* Returns once a thread touched the page: it is stalled there now. */
static void stall_wait(struct stall *s)
{
    struct uffd_msg m;
    ssize_t n;
    while ((n = read(s->uffd, &m, sizeof m)) < 0 && errno == EINTR) {
    }
    CHECK_EQ(n, (ssize_t)sizeof m);
    CHECK_EQ(m.event, UFFD_EVENT_PAGEFAULT);
}

/* Serves the fault: the page holds the eventfd value 1; the writer goes on. */
static void stall_release(struct stall *s)
{
    char *src = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(src != MAP_FAILED);
    uint64_t one = 1;
    memcpy(src, &one, sizeof one);
    struct uffdio_copy c = {.dst = (uintptr_t)s->page, .src = (uintptr_t)src, .len = s->size};
    CHECK_EQ(ioctl(s->uffd, UFFDIO_COPY, &c), 0);
    munmap(src, s->size);
}

static void stall_free(struct stall *s)
{
    munmap(s->page, s->size);
    close(s->uffd);
}

/* A cancel_io_write of 8 bytes from the stalling page. */
struct writer {
    int fd;
    struct stall *stall;
    ssize_t result;
    pthread_t th;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    w->result = cancel_io_write(CANCEL_TOKEN_NONE, w->fd, w->stall->page, 8);
    return NULL;
}

/* Starts the write on a blocking eventfd (whose writes have no RWF_NOWAIT,
 * so O_NONBLOCK is switched on around the one write) and returns once it
 * stalls inside that write. */
static void start_stalled_write(struct writer *w, struct stall *s, int efd)
{
    w->fd = efd;
    w->stall = s;
    w->result = -2;
    w->th = test_spawn(writer_main, w);
    stall_wait(s);
}

static void stalled_switch_holds_up_nothing_else(void)
{
    struct stall s;
    CHECK(stall_new(&s));
    int efd = eventfd(0, EFD_CLOEXEC);
    CHECK(efd >= 0);
    struct writer w;
    start_stalled_write(&w, &s, efd);

    /* An accept on a blocking listener (switched too) with a connection
     * waiting: it goes through. */
    struct sockaddr_in a;
    int l = tcp_listener(4, &a);
    int cl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK_EQ(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
    int conn = cancel_io_accept(CANCEL_TOKEN_NONE, l, NULL, NULL, SOCK_CLOEXEC);
    CHECK(conn >= 0);
    CHECK(!is_nonblocking(l));
    close(conn);
    close(cl);
    close(l);

    /* fork goes through (the library's fork handlers wait for nothing
     * that can stall). */
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(0);
    int st;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    stall_release(&s);
    test_join(w.th);
    CHECK_EQ(w.result, 8);
    CHECK(!is_nonblocking(efd));
    uint64_t v;
    CHECK_EQ(read(efd, &v, 8), 8);
    CHECK_EQ(v, 1);
    close(efd);
    stall_free(&s);
}

/* The caller's number is closed and given to a new non-blocking socket
 * while the write stalls: the socket keeps O_NONBLOCK, and the eventfd's
 * own description gets its flags back. */
static void restore_never_lands_on_a_reused_number(void)
{
    struct stall s;
    CHECK(stall_new(&s));
    int efd = eventfd(0, EFD_CLOEXEC);
    CHECK(efd >= 0);
    int keep = fcntl(efd, F_DUPFD_CLOEXEC, 0); /* the same description */
    CHECK(keep >= 0);
    struct writer w;
    start_stalled_write(&w, &s, efd);

    int sock = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(sock >= 0);
    CHECK_EQ(dup3(sock, efd, O_CLOEXEC), efd); /* closes the eventfd's number, reuses it */
    close(sock);

    stall_release(&s);
    test_join(w.th);
    CHECK_EQ(w.result, 8);
    CHECK(is_nonblocking(efd));
    CHECK(!is_nonblocking(keep));
    uint64_t v;
    CHECK_EQ(read(keep, &v, 8), 8);
    CHECK_EQ(v, 1);
    close(efd);
    close(keep);
    stall_free(&s);
}

int main(void)
{
    struct stall probe;
    if (!stall_new(&probe)) {
        fprintf(stderr, "userfaultfd is not allowed here: skipped\n");
        return 77;
    }
    stall_free(&probe);
    RUN(stalled_switch_holds_up_nothing_else);
    RUN(restore_never_lands_on_a_reused_number);
    return 0;
}
