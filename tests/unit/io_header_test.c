/* <cancel/io.h> is self-contained: it comes first here, and everything its
 * declarations need (ssize_t, struct pollfd, nfds_t, struct sockaddr,
 * socklen_t, int64_t, cancel_token) is usable without another include.
 * (signal_test.c does the same for <cancel/signal.h>.) */
#include <cancel/io.h>

static ssize_t (*const readers[])(cancel_token, int, void *, size_t) = {cancel_io_read};
static int (*const pollers[])(cancel_token, struct pollfd *, nfds_t, int64_t) = {cancel_io_poll};
static int (*const acceptors[])(cancel_token, int, struct sockaddr *, socklen_t *, int) = {cancel_io_accept};

int main(void)
{
    struct pollfd p = {-1, POLLIN, 0};
    socklen_t len = 0;
    (void)len;
    return readers[0] && pollers[0](CANCEL_TOKEN_NONE, &p, 1, 0) == 0 && acceptors[0] ? 0 : 1;
}
