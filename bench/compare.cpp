/*
 * compare: libcancel beside its peers, GLib's GCancellable and C++20's
 * std::stop_source, on the same operations in the same run.
 *
 * Every row runs its contenders R times in rotation (ours, GLib, C++,
 * baseline, the first of them shifting each round), so that frequency drift
 * and a neighbour's noise hit all of them alike. The table shows medians, the
 * ratio of ours to the best peer, and the ratio of ours to a baseline: the
 * bare mechanism underneath, which no implementation can beat. A peer that
 * lacks a feature is emulated the obvious way (marked *) or shown as "-".
 * On a shared machine trust the ratios more than the absolute figures.
 *
 *   compare [repeats] [--quick]    (5 repeats by default; --quick runs 10x
 *                                   fewer iterations, as a smoke test)
 */
#include <cancel.h>

#if COMPARE_HAVE_GLIB
#include <gio/gio.h>
#endif

#include <dirent.h>
#include <linux/futex.h>
#include <malloc.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if COMPARE_HAVE_GLIB
#define GLIB_FN(...) Fn(__VA_ARGS__)
#else
#define GLIB_FN(...) Fn()
#endif

namespace {

/* ---------------------------------------------------------------------
 * Harness
 * --------------------------------------------------------------------- */

int repeats = 5;
long shrink = 1; /* 10 under --quick */
long n_(long full)
{
    return std::max(1L, full / shrink);
}

int64_t now_ns()
{
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

/* Time between two clock reads; rows that time one short call per round
 * subtract it, or it would swamp a single callback. */
int64_t clock_cost;

/* GCC deletes malloc/free and new/delete pairs whose pointer goes unused. */
template <class T> inline void escape(T *p)
{
    asm volatile("" : : "g"(p) : "memory");
}
std::atomic<uint64_t> sink;
inline void consume(uint64_t v)
{
    sink.fetch_add(v, std::memory_order_relaxed);
}

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
double percentile(std::vector<double> v, double p)
{
    std::sort(v.begin(), v.end());
    return v[size_t(p * double(v.size() - 1) + 0.5)];
}

/* Some rows report a second figure taken in the same run (throughput, peak
 * memory), so that both describe the same repetitions. */
struct Res {
    double v, extra;
    Res(double a, double b = NAN) : v(a), extra(b)
    {
    }
};
using Fn = std::function<Res()>;
enum { OURS, GLIB, CXX, BASE, NCOL };
struct Meds {
    double v[NCOL], extra[NCOL];
};

Meds measure(Fn ours, Fn glib, Fn cxx, Fn base)
{
    Fn f[NCOL] = {std::move(ours), std::move(glib), std::move(cxx), std::move(base)};
    std::vector<double> v[NCOL], x[NCOL];
    for (int r = 0; r < repeats; r++)
        for (int k = 0; k < NCOL; k++) {
            int c = (r + k) % NCOL;
            if (!f[c])
                continue;
            Res res = f[c]();
            if (!std::isnan(res.v))
                v[c].push_back(res.v);
            if (!std::isnan(res.extra))
                x[c].push_back(res.extra);
        }
    Meds m;
    for (int c = 0; c < NCOL; c++) {
        m.v[c] = v[c].empty() ? NAN : median(v[c]);
        m.extra[c] = x[c].empty() ? NAN : median(x[c]);
    }
    return m;
}

std::string num(double v)
{
    if (std::isnan(v))
        return "-";
    char b[32];
    snprintf(b, sizeof b, v >= 1000 ? "%.0f" : v >= 100 ? "%.1f" : "%.2f", v);
    return b;
}
std::string ratio(double a, double b)
{
    if (std::isnan(a) || std::isnan(b) || b <= 0)
        return "-";
    char s[32];
    snprintf(s, sizeof s, "%.2fx", a / b);
    return s;
}

void print_cells(const char *label, const std::string (&cell)[NCOL], const std::string &vs_peer,
                 const std::string &vs_base)
{
    printf("  %-52s %11s %11s %11s %11s %15s %14s\n", label, cell[OURS].c_str(), cell[GLIB].c_str(),
           cell[CXX].c_str(), cell[BASE].c_str(), vs_peer.c_str(), vs_base.c_str());
    fflush(stdout);
}

/* For throughput, the best peer is the fastest, i.e. the highest figure. */
void row(const char *label, const double (&v)[NCOL], bool higher_is_better = false)
{
    double best = NAN;
    for (int c : {GLIB, CXX})
        if (!std::isnan(v[c]) && (std::isnan(best) || (higher_is_better ? v[c] > best : v[c] < best)))
            best = v[c];
    std::string cell[NCOL];
    for (int c = 0; c < NCOL; c++)
        cell[c] = num(v[c]);
    print_cells(label, cell, ratio(v[OURS], best), ratio(v[OURS], v[BASE]));
}

void section(const char *title)
{
    printf("%s\n", title);
}

template <class Body> double timed(long n, Body body)
{
    int64_t t0 = now_ns();
    body(n);
    return double(now_ns() - t0) / double(n);
}

/* Two CPUs the process may use (-1 if it has one), for rows that need two
 * threads truly in parallel. */
cpu_set_t allowed;
int two_cpus[2] = {-1, -1};
void find_cpus()
{
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || CPU_COUNT(&allowed) < 2)
        return;
    for (int c = 0, k = 0; c < CPU_SETSIZE && k < 2; c++)
        if (CPU_ISSET(c, &allowed))
            two_cpus[k++] = c;
}
void pin_to(int c)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(c, &set);
    if (c >= 0)
        sched_setaffinity(0, sizeof set, &set);
}
void unpin()
{
    if (two_cpus[0] >= 0)
        sched_setaffinity(0, sizeof allowed, &allowed);
}

/* Left to the scheduler, two short runs may share one CPU and take turns
 * instead of contending; so each thread has its own CPU, and both are
 * released together. The slower one's time gives the pair's throughput. */
template <class Body> Res on_two_threads(long n, Body body)
{
    std::atomic<int> ready{0};
    double ns[2];
    auto run = [&](int i) {
        pin_to(two_cpus[i]);
        ready.fetch_add(1);
        while (ready.load() < 2) {
        }
        int64_t t0 = now_ns();
        body(n);
        ns[i] = double(now_ns() - t0);
    };
    std::thread other(run, 1);
    run(0);
    other.join();
    unpin();
    return Res((ns[0] + ns[1]) / 2 / double(n), 2.0 * double(n) / std::max(ns[0], ns[1]) * 1e3);
}

long rss_bytes()
{
    long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * sysconf(_SC_PAGESIZE);
}

/* Bytes per object: RSS growth while n objects are alive, so that allocator
 * overhead counts. The arrays that hold them are touched beforehand by the
 * caller (vectors are zero-filled), so their own pages do not count; freed
 * memory is handed back first so that reuse does not hide growth. */
template <class Make, class Drop> double rss_per(long n, Make make, Drop drop)
{
    malloc_trim(0);
    long r0 = rss_bytes();
    for (long i = 0; i < n; i++)
        make(i);
    long r1 = rss_bytes();
    for (long i = 0; i < n; i++)
        drop(i);
    return double(r1 - r0) / double(n);
}

/* ---------------------------------------------------------------------
 * Shared objects
 * --------------------------------------------------------------------- */

constexpr int64_t HOUR_NS = 3600LL * 1000000000;
constexpr int MAXCB = 1000;

cancel_source *live_src, *par_src[2];
cancel_token live_tok, par_tok[2];
std::stop_source live_ss, par_ss[2];
std::stop_token live_st, par_st[2];
std::atomic<int> flag_word{0};
std::atomic<uint64_t> rmw_word{0};
uint64_t counters[MAXCB];

void nop_cb(void *)
{
}
void count_cb(void *p)
{
    ++*static_cast<uint64_t *>(p);
}
struct Nop {
    void operator()() const noexcept
    {
    }
};
struct Count {
    uint64_t *c;
    void operator()() const noexcept
    {
        ++*c;
    }
};
struct StopChild {
    std::stop_source *child;
    void operator()() const noexcept
    {
        child->request_stop();
    }
};

#if COMPARE_HAVE_GLIB
GCancellable *live_gc, *par_gc[2];
GMainContext *gctx; /* never iterated: timeouts stay pending */

void g_nop(GCancellable *, gpointer)
{
}
void g_count(GCancellable *, gpointer p)
{
    ++*static_cast<uint64_t *>(p);
}
void g_cancel_child(GCancellable *, gpointer child)
{
    g_cancellable_cancel(static_cast<GCancellable *>(child));
}
gboolean g_timeout_cancel(gpointer c)
{
    g_cancellable_cancel(static_cast<GCancellable *>(c));
    return G_SOURCE_REMOVE;
}
GSource *g_attach_timeout(GCancellable *c)
{
    GSource *t = g_timeout_source_new(3600 * 1000);
    g_source_set_callback(t, g_timeout_cancel, c, nullptr);
    g_source_attach(t, gctx);
    return t;
}
void g_drop_timeout(GSource *t)
{
    g_source_destroy(t);
    g_source_unref(t);
}
#endif

/* ---------------------------------------------------------------------
 * 1. check, 2. register + unregister: loop bodies
 * --------------------------------------------------------------------- */

auto ours_check = [](long n) {
    cancel_token t = live_tok;
    uint64_t a = 0;
    for (long i = 0; i < n; i++)
        a += cancel_token_is_requested(t);
    consume(a);
};
auto cxx_check = [](long n) {
    std::stop_token t = live_st;
    uint64_t a = 0;
    for (long i = 0; i < n; i++)
        a += t.stop_requested();
    consume(a);
};
auto base_check = [](long n) {
    uint64_t a = 0;
    for (long i = 0; i < n; i++)
        a += unsigned(flag_word.load(std::memory_order_acquire)) & 1;
    consume(a);
};

auto ours_reg = [](long n) {
    cancel_token t = live_tok;
    cancel_registration r;
    for (long i = 0; i < n; i++) {
        cancel_register(t, &r, nop_cb, nullptr);
        cancel_unregister(&r);
    }
};
auto cxx_reg = [](long n) {
    std::stop_token t = live_st;
    for (long i = 0; i < n; i++) {
        std::stop_callback<Nop> cb(t, Nop{});
        escape(&cb);
    }
};
/* One shared word: from two threads it pays the same line transfers as two
 * registrations on one token. */
auto base_rmw = [](long n) {
    for (long i = 0; i < n; i++) {
        rmw_word.fetch_add(1, std::memory_order_acq_rel);
        rmw_word.fetch_sub(1, std::memory_order_acq_rel);
    }
};

#if COMPARE_HAVE_GLIB
auto glib_check = [](long n) {
    GCancellable *c = live_gc;
    uint64_t a = 0;
    for (long i = 0; i < n; i++)
        a += g_cancellable_is_cancelled(c) ? 1 : 0;
    consume(a);
};
auto glib_reg = [](long n) {
    GCancellable *c = live_gc;
    for (long i = 0; i < n; i++) {
        gulong id = g_cancellable_connect(c, G_CALLBACK(g_nop), nullptr, nullptr);
        g_cancellable_disconnect(c, id);
    }
};
#endif

/* ---------------------------------------------------------------------
 * 3. cancel with k callbacks: ns per callback, the cancel call alone timed
 * --------------------------------------------------------------------- */

long rounds_for(int k, long div = 1)
{
    return std::max(10L, n_(1000000) / k / div);
}
double per_callback(int64_t total, long rounds, int k)
{
    return double(total - rounds * clock_cost) / (double(rounds) * k);
}

double ours_cancel(int k)
{
    static cancel_registration regs[MAXCB];
    long rounds = rounds_for(k);
    int64_t total = 0;
    for (long r = 0; r < rounds; r++) {
        cancel_source *s = cancel_source_new();
        cancel_token t = cancel_source_token(s);
        for (int i = 0; i < k; i++)
            cancel_register(t, &regs[i], count_cb, &counters[i]);
        int64_t t0 = now_ns();
        cancel_source_cancel(s);
        total += now_ns() - t0;
        cancel_source_free(s);
    }
    return per_callback(total, rounds, k);
}

double cxx_cancel(int k)
{
    static std::optional<std::stop_callback<Count>> cbs[MAXCB];
    long rounds = rounds_for(k);
    int64_t total = 0;
    for (long r = 0; r < rounds; r++) {
        std::stop_source ss;
        std::stop_token t = ss.get_token();
        for (int i = 0; i < k; i++)
            cbs[i].emplace(t, Count{&counters[i]});
        int64_t t0 = now_ns();
        ss.request_stop();
        total += now_ns() - t0;
        for (int i = 0; i < k; i++)
            cbs[i].reset();
    }
    return per_callback(total, rounds, k);
}

#if COMPARE_HAVE_GLIB
double glib_cancel(int k)
{
    long rounds = rounds_for(k, 10); /* connecting costs microseconds */
    int64_t total = 0;
    for (long r = 0; r < rounds; r++) {
        GCancellable *c = g_cancellable_new();
        for (int i = 0; i < k; i++)
            g_cancellable_connect(c, G_CALLBACK(g_count), &counters[i], nullptr);
        int64_t t0 = now_ns();
        g_cancellable_cancel(c);
        total += now_ns() - t0;
        g_object_unref(c);
    }
    return per_callback(total, rounds, k);
}
#endif

/* Callbacks run newest first, so the baseline walks backwards too. */
double fnptr_calls(int k)
{
    static cancel_fn *fns[MAXCB];
    static void *args[MAXCB];
    for (int i = 0; i < k; i++) {
        fns[i] = count_cb;
        args[i] = &counters[i];
    }
    long rounds = rounds_for(k);
    int64_t total = 0;
    for (long r = 0; r < rounds; r++) {
        int64_t t0 = now_ns();
        for (int i = k - 1; i >= 0; i--) {
            cancel_fn *volatile fn = fns[i]; /* a real indirect call */
            fn(args[i]);
        }
        total += now_ns() - t0;
    }
    return per_callback(total, rounds, k);
}

/* ---------------------------------------------------------------------
 * 4. create + free; 5. deadlines: loop bodies
 * --------------------------------------------------------------------- */

auto ours_new = [](long n) {
    for (long i = 0; i < n; i++) {
        cancel_source *s = cancel_source_new();
        escape(s);
        cancel_source_free(s);
    }
};
auto cxx_new = [](long n) {
    for (long i = 0; i < n; i++) {
        std::stop_source ss;
        escape(&ss);
    }
};
auto base_malloc = [](long n) {
    for (long i = 0; i < n; i++) {
        void *p = malloc(56);
        escape(p);
        free(p);
    }
};
auto ours_linked(size_t np)
{
    return [np](long n) {
        for (long i = 0; i < n; i++) {
            cancel_source *s = cancel_source_new_linked(par_tok, np);
            escape(s);
            cancel_source_free(s);
        }
    };
}
auto cxx_linked(size_t np)
{
    return [np](long n) {
        for (long i = 0; i < n; i++) {
            std::stop_source ss;
            std::optional<std::stop_callback<StopChild>> link[2];
            for (size_t j = 0; j < np; j++)
                link[j].emplace(par_st[j], StopChild{&ss});
            escape(&ss);
        }
    };
}
auto ours_deadline = [](long n) {
    for (long i = 0; i < n; i++) {
        cancel_source *s = cancel_source_new();
        cancel_source_cancel_after(s, HOUR_NS);
        cancel_source_free(s);
    }
};

#if COMPARE_HAVE_GLIB
auto glib_new = [](long n) {
    for (long i = 0; i < n; i++)
        g_object_unref(g_cancellable_new());
};
auto glib_linked(size_t np)
{
    return [np](long n) {
        for (long i = 0; i < n; i++) {
            GCancellable *c = g_cancellable_new();
            gulong id[2];
            for (size_t j = 0; j < np; j++)
                id[j] = g_cancellable_connect(par_gc[j], G_CALLBACK(g_cancel_child), c, nullptr);
            for (size_t j = 0; j < np; j++)
                g_cancellable_disconnect(par_gc[j], id[j]);
            g_object_unref(c);
        }
    };
}
auto glib_deadline = [](long n) {
    for (long i = 0; i < n; i++) {
        GCancellable *c = g_cancellable_new();
        g_drop_timeout(g_attach_timeout(c));
        g_object_unref(c);
    }
};
#endif

/* stat counts in clock ticks, too coarse to tell "never" from "rarely";
 * schedstat adds nanoseconds and a count of timeslices, i.e. wake-ups. */
struct ThreadCpu {
    long ticks = -1;
    long long ns = -1, slices = -1;
};
bool read_file(const std::string &path, char *buf, size_t size)
{
    FILE *f = fopen(path.c_str(), "r");
    if (!f)
        return false;
    bool ok = fgets(buf, int(size), f) != nullptr;
    fclose(f);
    return ok;
}
ThreadCpu library_thread_cpu()
{
    ThreadCpu r;
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return r;
    while (dirent *e = readdir(d)) {
        std::string dir = std::string("/proc/self/task/") + e->d_name;
        char buf[1024];
        if (e->d_name[0] == '.' || !read_file(dir + "/comm", buf, sizeof buf) || strcmp(buf, "cancel\n") != 0)
            continue;
        unsigned long ut, st;
        const char *p;
        if (read_file(dir + "/stat", buf, sizeof buf) && (p = strrchr(buf, ')')) != nullptr &&
            sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
            r.ticks = long(ut + st);
        if (read_file(dir + "/schedstat", buf, sizeof buf) &&
            sscanf(buf, "%lld %*d %lld", &r.ns, &r.slices) != 2)
            r.ns = r.slices = -1;
        break;
    }
    closedir(d);
    return r;
}

/* ---------------------------------------------------------------------
 * 6. cancel-to-wake latency
 * --------------------------------------------------------------------- */

enum Wake { W_OURS_WAIT, W_CXX_CV, W_FUTEX, W_OURS_FD, W_GLIB_FD, W_EVENTFD };

long futex(uint32_t *word, int op, uint32_t val)
{
    return syscall(SYS_futex, word, op, val, nullptr, nullptr, 0);
}
void wait_readable(int fd)
{
    pollfd p = {fd, POLLIN, 0};
    while (poll(&p, 1, -1) != 1) {
    }
}

/* A fresh waiter per sample, so that no contender inherits another's warm
 * state; returns microseconds. */
double wake_once(Wake kind)
{
    cancel_source *src = nullptr;
    std::optional<std::stop_source> ss;
    uint32_t word = 0;
    int efd = -1;
#if COMPARE_HAVE_GLIB
    GCancellable *gc = nullptr;
#endif
    switch (kind) {
    case W_OURS_WAIT:
    case W_OURS_FD:
        src = cancel_source_new();
        break;
    case W_CXX_CV:
        ss.emplace();
        break;
    case W_EVENTFD:
        efd = eventfd(0, EFD_CLOEXEC);
        break;
    case W_GLIB_FD:
#if COMPARE_HAVE_GLIB
        gc = g_cancellable_new();
#endif
        break;
    case W_FUTEX:
        break;
    }
    std::atomic<int> ready{0};
    std::atomic<int64_t> woke{0};
    std::thread waiter([&] {
        pin_to(two_cpus[1]);
        switch (kind) {
        case W_OURS_WAIT: {
            cancel_token t = cancel_source_token(src);
            ready = 1;
            cancel_token_wait(t, CANCEL_INFINITE);
            break;
        }
        case W_CXX_CV: {
            std::mutex m;
            std::condition_variable_any cv;
            std::unique_lock lock(m);
            ready = 1;
            cv.wait(lock, ss->get_token(), [] { return false; });
            break;
        }
        case W_FUTEX:
            ready = 1;
            while (__atomic_load_n(&word, __ATOMIC_ACQUIRE) == 0)
                futex(&word, FUTEX_WAIT_PRIVATE, 0);
            break;
        case W_OURS_FD: {
            int fd = cancel_token_fd(cancel_source_token(src));
            ready = 1;
            wait_readable(fd);
            break;
        }
        case W_EVENTFD:
            ready = 1;
            wait_readable(efd);
            break;
        case W_GLIB_FD: {
#if COMPARE_HAVE_GLIB
            int fd = g_cancellable_get_fd(gc);
            ready = 1;
            wait_readable(fd);
            woke = now_ns();
            g_cancellable_release_fd(gc);
#endif
            break;
        }
        }
        if (woke.load() == 0)
            woke = now_ns();
    });
    while (!ready.load()) {
    }
    timespec settle = {0, 200000}; /* the handshake comes just before blocking */
    nanosleep(&settle, nullptr);
    int64_t t0 = now_ns();
    switch (kind) {
    case W_OURS_WAIT:
    case W_OURS_FD:
        cancel_source_cancel(src);
        break;
    case W_CXX_CV:
        ss->request_stop();
        break;
    case W_FUTEX:
        __atomic_store_n(&word, 1, __ATOMIC_RELEASE);
        futex(&word, FUTEX_WAKE_PRIVATE, 1);
        break;
    case W_EVENTFD: {
        uint64_t one = 1;
        if (write(efd, &one, sizeof one) != sizeof one)
            abort();
        break;
    }
    case W_GLIB_FD:
#if COMPARE_HAVE_GLIB
        g_cancellable_cancel(gc);
#endif
        break;
    }
    waiter.join();
    double us = double(woke.load() - t0) / 1e3;
    cancel_source_free(src);
    if (efd >= 0)
        close(efd);
#if COMPARE_HAVE_GLIB
    if (gc)
        g_object_unref(gc);
#endif
    return us;
}

/* Each contender's samples come in two halves, all contenders' first halves
 * before any second half, so that drift over the run hits them alike. */
void latency_row(const char *label, const int (&kinds)[NCOL])
{
    long half = n_(2000) / 2;
    std::vector<double> s[NCOL];
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < NCOL; c++)
            for (long i = 0; kinds[c] >= 0 && i < half; i++)
                s[c].push_back(wake_once(Wake(kinds[c])));
    std::string cell[NCOL];
    double p50[NCOL], best = NAN;
    for (int c = 0; c < NCOL; c++) {
        p50[c] = NAN;
        if (s[c].empty()) {
            cell[c] = "-";
            continue;
        }
        p50[c] = percentile(s[c], 0.5);
        char b[48];
        double p99 = percentile(s[c], 0.99);
        snprintf(b, sizeof b, p99 < 100 ? "%.1f/%.1f" : "%.1f/%.0f", p50[c], p99);
        cell[c] = b;
        if ((c == GLIB || c == CXX) && (std::isnan(best) || p50[c] < best))
            best = p50[c];
    }
    print_cells(label, cell, ratio(p50[OURS], best), ratio(p50[OURS], p50[BASE]));
}

/* ---------------------------------------------------------------------
 * 7. memory
 * --------------------------------------------------------------------- */

long M()
{
    return n_(1000000);
}
/* Labels name the count actually used, which --quick shrinks. */
std::string with_m(const char *fmt)
{
    std::string n = std::to_string(M());
    for (int i = int(n.size()) - 3; i > 0; i -= 3)
        n.insert(size_t(i), ",");
    char out[128];
    snprintf(out, sizeof out, fmt, n.c_str());
    return out;
}

double ours_mem_source()
{
    std::vector<cancel_source *> v(static_cast<size_t>(M()));
    return rss_per(
        M(), [&](long i) { v[i] = cancel_source_new(); }, [&](long i) { cancel_source_free(v[i]); });
}
double cxx_mem_source()
{
    std::vector<std::optional<std::stop_source>> v(static_cast<size_t>(M()));
    return rss_per(
        M(), [&](long i) { v[i].emplace(); }, [&](long i) { v[i].reset(); });
}
double base_mem_malloc()
{
    std::vector<void *> v(static_cast<size_t>(M()));
    return rss_per(
        M(), [&](long i) { v[i] = malloc(56); }, [&](long i) { free(v[i]); });
}
double ours_mem_linked()
{
    std::vector<cancel_source *> v(static_cast<size_t>(M()));
    return rss_per(
        M(), [&](long i) { v[i] = cancel_source_new_linked(par_tok, 1); },
        [&](long i) { cancel_source_free(v[i]); });
}
/* The stop_callback is the emulated link, held by the caller: RSS cannot see
 * it, so its size is added. */
double cxx_mem_linked()
{
    std::vector<std::optional<std::stop_source>> s(static_cast<size_t>(M()));
    std::vector<std::optional<std::stop_callback<StopChild>>> link(static_cast<size_t>(M()));
    return double(sizeof(std::stop_callback<StopChild>)) +
           rss_per(
               M(),
               [&](long i) {
                   s[i].emplace();
                   link[i].emplace(par_st[0], StopChild{&*s[i]});
               },
               [&](long i) {
                   link[i].reset();
                   s[i].reset();
               });
}
/* Registrations live in caller storage: their size, plus whatever
 * registering allocates (nothing, if the claim holds). The allocator's own
 * count is exact where RSS would add a little noise to a zero. */
size_t malloc_bytes()
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}
template <class Make, class Drop> double size_plus_allocated(size_t size, long n, Make make, Drop drop)
{
    make(0); /* the first registration starts the library thread: not per object */
    drop(0);
    size_t a0 = malloc_bytes();
    for (long i = 0; i < n; i++)
        make(i);
    double grown = double(malloc_bytes()) - double(a0);
    for (long i = 0; i < n; i++)
        drop(i);
    return double(size) + grown / double(n);
}
double ours_mem_reg()
{
    std::vector<cancel_registration> r(static_cast<size_t>(M()));
    return size_plus_allocated(
        sizeof(cancel_registration), M(), [&](long i) { cancel_register(live_tok, &r[i], nop_cb, nullptr); },
        [&](long i) { cancel_unregister(&r[i]); });
}
double cxx_mem_reg()
{
    std::vector<std::optional<std::stop_callback<Nop>>> r(static_cast<size_t>(M()));
    return size_plus_allocated(
        sizeof(std::stop_callback<Nop>), M(), [&](long i) { r[i].emplace(live_st, Nop{}); },
        [&](long i) { r[i].reset(); });
}
double ours_mem_deadline()
{
    std::vector<cancel_source *> v(static_cast<size_t>(M()));
    for (auto &s : v)
        s = cancel_source_new();
    double b = rss_per(
        M(), [&](long i) { cancel_source_cancel_after(v[i], HOUR_NS); },
        [&](long i) { cancel_source_cancel_after(v[i], CANCEL_INFINITE); });
    for (auto s : v)
        cancel_source_free(s);
    return b;
}
/* Freed in creation order, as deadlines of requests that complete in turn
 * would be; times exclude the RSS read. */
Res ours_many_deadlines()
{
    std::vector<cancel_source *> v(static_cast<size_t>(M()));
    malloc_trim(0);
    long r0 = rss_bytes();
    int64_t t0 = now_ns();
    for (auto &s : v) {
        s = cancel_source_new();
        cancel_source_cancel_after(s, HOUR_NS);
    }
    int64_t t1 = now_ns();
    long r1 = rss_bytes();
    int64_t t2 = now_ns();
    for (auto s : v)
        cancel_source_free(s);
    int64_t t3 = now_ns();
    return Res(double(t1 - t0 + t3 - t2) / double(M()), double(r1 - r0) / 1048576.0);
}

#if COMPARE_HAVE_GLIB
double glib_mem_source()
{
    std::vector<GCancellable *> v(static_cast<size_t>(M()));
    return rss_per(
        M(), [&](long i) { v[i] = g_cancellable_new(); }, [&](long i) { g_object_unref(v[i]); });
}
double glib_mem_linked()
{
    std::vector<std::pair<GCancellable *, gulong>> v(static_cast<size_t>(M()));
    return rss_per(
        M(),
        [&](long i) {
            v[i].first = g_cancellable_new();
            v[i].second = g_cancellable_connect(par_gc[0], G_CALLBACK(g_cancel_child), v[i].first, nullptr);
        },
        [&](long i) {
            g_cancellable_disconnect(par_gc[0], v[i].second);
            g_object_unref(v[i].first);
        });
}
double glib_mem_reg()
{
    std::vector<gulong> id(static_cast<size_t>(M()));
    return rss_per(
        M(), [&](long i) { id[i] = g_cancellable_connect(live_gc, G_CALLBACK(g_nop), nullptr, nullptr); },
        [&](long i) { g_cancellable_disconnect(live_gc, id[i]); });
}
double glib_mem_deadline()
{
    std::vector<GCancellable *> c(static_cast<size_t>(M()));
    std::vector<GSource *> t(static_cast<size_t>(M()));
    for (auto &x : c)
        x = g_cancellable_new();
    double b = rss_per(
        M(), [&](long i) { t[i] = g_attach_timeout(c[i]); }, [&](long i) { g_drop_timeout(t[i]); });
    for (auto x : c)
        g_object_unref(x);
    return b;
}
Res glib_many_deadlines()
{
    std::vector<std::pair<GCancellable *, GSource *>> v(static_cast<size_t>(M()));
    malloc_trim(0);
    long r0 = rss_bytes();
    int64_t t0 = now_ns();
    for (auto &x : v) {
        x.first = g_cancellable_new();
        x.second = g_attach_timeout(x.first);
    }
    int64_t t1 = now_ns();
    long r1 = rss_bytes();
    int64_t t2 = now_ns();
    for (auto &x : v) {
        g_drop_timeout(x.second);
        g_object_unref(x.first);
    }
    int64_t t3 = now_ns();
    return Res(double(t1 - t0 + t3 - t2) / double(M()), double(r1 - r0) / 1048576.0);
}
#endif

/* The memory rows, each contender measured alone in a fresh process: in
 * this one, memory that the earlier rows freed stays resident (fragmented by
 * GLib's slice allocator beyond malloc_trim's reach) and would be reused
 * unseen. */
constexpr int MEM_ROWS = 5;
Fn mem_fn(int row, int col)
{
    static const Fn table[MEM_ROWS][NCOL] = {
        {ours_mem_source, GLIB_FN(glib_mem_source), cxx_mem_source, base_mem_malloc},
        {ours_mem_linked, GLIB_FN(glib_mem_linked), cxx_mem_linked, Fn()},
        {ours_mem_reg, GLIB_FN(glib_mem_reg), cxx_mem_reg, Fn()},
        {ours_mem_deadline, GLIB_FN(glib_mem_deadline), Fn(), Fn()},
        {ours_many_deadlines, GLIB_FN(glib_many_deadlines), Fn(), Fn()},
    };
    return table[row][col];
}

Res in_fresh_process(int row, int col)
{
    std::string r = std::to_string(row), c = std::to_string(col); /* no allocation after fork */
    int fd[2];
    if (pipe(fd) != 0)
        return Res(NAN);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], STDOUT_FILENO);
        close(fd[0]);
        close(fd[1]);
        execl("/proc/self/exe", "compare", "--memory-child", r.c_str(), c.c_str(),
              shrink > 1 ? "--quick" : nullptr, static_cast<char *>(nullptr));
        _exit(127);
    }
    close(fd[1]);
    char buf[128] = "";
    size_t got = 0;
    ssize_t k;
    while (pid > 0 && (k = read(fd[0], buf + got, sizeof buf - 1 - got)) > 0)
        got += size_t(k);
    close(fd[0]);
    if (pid > 0)
        waitpid(pid, nullptr, 0);
    double v = NAN, x = NAN;
    if (sscanf(buf, "%lf %lf", &v, &x) < 1)
        v = NAN;
    return Res(v, x);
}

void header()
{
    char date[64];
    time_t now = time(nullptr);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    std::string model = "unknown CPU";
    if (FILE *f = fopen("/proc/cpuinfo", "r")) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (strncmp(line, "model name", 10) == 0) {
                const char *v = strchr(line, ':');
                model = v ? v + 2 : line;
                model.erase(model.find_last_not_of(" \n") + 1);
                break;
            }
        fclose(f);
    }
    std::vector<double> cost;
    for (int i = 0; i < 1001; i++) {
        int64_t a = now_ns();
        cost.push_back(double(now_ns() - a));
    }
    clock_cost = int64_t(median(cost));

    printf("libcancel %d.%d.%d against its peers: medians of %d runs%s, %s\n", CANCEL_VERSION_MAJOR,
           CANCEL_VERSION_MINOR, CANCEL_VERSION_PATCH, repeats,
           shrink > 1 ? " (quick: 10x fewer iterations)" : "", date);
    printf("machine: %s, %ld CPUs; clock read %lld ns (subtracted from per-round timings)\n", model.c_str(),
           sysconf(_SC_NPROCESSORS_ONLN), (long long)clock_cost);
#if COMPARE_HAVE_GLIB
    printf("peers: GLib %u.%u.%u GCancellable; C++20 std::stop_source (libstdc++ %d)\n", glib_major_version,
           glib_minor_version, glib_micro_version, _GLIBCXX_RELEASE);
#else
    printf("GLib: not found, skipped\n");
    printf("peers: C++20 std::stop_source (libstdc++ %d)\n", _GLIBCXX_RELEASE);
#endif
    printf("\n  %-52s %11s %11s %11s %11s %15s %14s\n", "operation", "ours", "GLib", "C++20", "baseline",
           "ours/best peer", "ours/baseline");
}

void run_all()
{
    header();

    const long CHECK = n_(100000000), REG = n_(10000000), REG2 = n_(2000000), NEW = n_(10000000),
               DL = n_(2000000);
    Meds m;

    section("1. check on a live token (ns per check)");
    m = measure([=] { return timed(CHECK, ours_check); }, GLIB_FN([=] { return timed(CHECK, glib_check); }),
                [=] { return timed(CHECK, cxx_check); }, [=] { return timed(CHECK, base_check); });
    row("1 thread", m.v);
    m = measure([=] { return on_two_threads(CHECK, ours_check); },
                GLIB_FN([=] { return on_two_threads(CHECK, glib_check); }),
                [=] { return on_two_threads(CHECK, cxx_check); },
                [=] { return on_two_threads(CHECK, base_check); });
    row("2 threads, one token (ns per check per thread)", m.v);

    section("2. register + unregister on a live token");
    m = measure([=] { return timed(REG, ours_reg); }, GLIB_FN([=] { return timed(REG / 10, glib_reg); }),
                [=] { return timed(REG, cxx_reg); }, [=] { return timed(REG, base_rmw); });
    row("1 thread (ns)", m.v);
    m = measure([=] { return on_two_threads(REG2, ours_reg); },
                GLIB_FN([=] { return on_two_threads(REG2 / 10, glib_reg); }),
                [=] { return on_two_threads(REG2, cxx_reg); },
                [=] { return on_two_threads(REG2, base_rmw); });
    row("2 threads, one token (Mops/s total, higher=better)", m.extra, true);

    section("3. cancel with k callbacks registered (ns per callback)");
    for (int k : {1, 10, 1000}) {
        char label[64];
        snprintf(label, sizeof label, "k = %d", k);
        m = measure([=] { return ours_cancel(k); }, GLIB_FN([=] { return glib_cancel(k); }),
                    [=] { return cxx_cancel(k); }, [=] { return fnptr_calls(k); });
        row(label, m.v);
    }

    section("4. create + free a source (ns)");
    m = measure([=] { return timed(NEW, ours_new); }, GLIB_FN([=] { return timed(NEW / 10, glib_new); }),
                [=] { return timed(NEW, cxx_new); }, [=] { return timed(NEW, base_malloc); });
    row("plain", m.v);
    for (size_t np : {1, 2}) {
        m = measure([=] { return timed(NEW, ours_linked(np)); },
                    GLIB_FN([=] { return timed(NEW / 10, glib_linked(np)); }),
                    [=] { return timed(NEW, cxx_linked(np)); }, [=] { return timed(NEW, ours_new); });
        row(np == 1 ? "linked, 1 parent (GLib*, C++*)" : "linked, 2 parents (GLib*, C++*)", m.v);
    }

    section("5. create + arm a 1 h deadline + free (ns)");
    m = measure([=] { return timed(DL, ours_deadline); },
                GLIB_FN([=] { return timed(DL / 10, glib_deadline); }), Fn(),
                [=] { return timed(DL, ours_new); });
    row("0 deadlines pending (GLib*)", m.v);
    {
        std::vector<cancel_source *> pending(static_cast<size_t>(M()));
        for (auto &s : pending) {
            s = cancel_source_new();
            cancel_source_cancel_after(s, HOUR_NS);
        }
#if COMPARE_HAVE_GLIB
        std::vector<std::pair<GCancellable *, GSource *>> gpending(static_cast<size_t>(M()));
        for (auto &x : gpending) {
            x.first = g_cancellable_new();
            x.second = g_attach_timeout(x.first);
        }
#endif
        ThreadCpu a = library_thread_cpu();
        sleep(2);
        ThreadCpu b = library_thread_cpu();

        m = measure([=] { return timed(DL, ours_deadline); },
                    GLIB_FN([=] { return timed(DL / 10, glib_deadline); }), Fn(),
                    [=] { return timed(DL, ours_new); });
        row(with_m("%s deadlines pending (GLib*)").c_str(), m.v);
        double lib_cpu[NCOL] = {
            a.ticks < 0 ? NAN : double(b.ticks - a.ticks) * 1000.0 / double(sysconf(_SC_CLK_TCK)), NAN, NAN,
            NAN};
        row(with_m("library thread CPU in 2 s, %s pending (ms)").c_str(), lib_cpu);
        if (a.ns >= 0)
            printf("  %-52s %lld ns on CPU, %lld timeslices\n", "  (schedstat of the same 2 s)", b.ns - a.ns,
                   b.slices - a.slices);
        for (auto s : pending)
            cancel_source_free(s);
#if COMPARE_HAVE_GLIB
        for (auto &x : gpending) {
            g_drop_timeout(x.second);
            g_object_unref(x.first);
        }
#endif
    }

    /* Where the woken thread runs decides the figure: woken onto the
     * waker's own CPU it waits for the waker to block (a few us), onto an
     * idle CPU it pays that CPU's wake-up (over 10 us on a VM), and the
     * scheduler's choice drifts within a run. Pinned apart, every sample is
     * the case of cancelling work that runs elsewhere. */
    pin_to(two_cpus[0]);
    section(two_cpus[1] >= 0 ? "6. cancel-to-wake latency, waiter and canceller on two CPUs (us, p50/p99)"
                             : "6. cancel-to-wake latency of a blocked waiter (us, p50/p99)");
    latency_row("blocked wait (C++: condition_variable_any)", {W_OURS_WAIT, -1, W_CXX_CV, W_FUTEX});
#if COMPARE_HAVE_GLIB
    latency_row("poll() on the descriptor", {W_OURS_FD, W_GLIB_FD, -1, W_EVENTFD});
#else
    latency_row("poll() on the descriptor", {W_OURS_FD, -1, -1, W_EVENTFD});
#endif
    unpin();

    section(with_m("7. memory (bytes per object, RSS growth over %s alive)").c_str());
    static const char *const mem_labels[MEM_ROWS - 1] = {
        "source",
        "linked source, 1 parent (GLib*, C++*)",
        "registration (ours, C++: sizeof, caller storage)",
        "pending deadline (GLib*)",
    };
    for (int r = 0; r < MEM_ROWS; r++) {
        Fn f[NCOL];
        for (int c = 0; c < NCOL; c++)
            if (mem_fn(r, c))
                f[c] = [=] { return in_fresh_process(r, c); };
        m = measure(f[OURS], f[GLIB], f[CXX], f[BASE]);
        if (r < MEM_ROWS - 1) {
            row(mem_labels[r], m.v);
        } else {
            row(with_m("%s with a 1 h deadline: ns per create+arm+free").c_str(), m.v);
            row("same: RSS growth at the peak (MiB)", m.extra);
        }
    }
    printf(
        "\nbaselines: 1 acquire load of an std::atomic<int>; 2 fetch_add + fetch_sub, acq_rel (from two\n"
        "threads on one shared word); 3 the callbacks called through a volatile function pointer;\n"
        "4 malloc(56) + free, for linked rows our plain create + free; 5 our plain create + free;\n"
        "6 raw futex wake, raw eventfd write; 7 malloc(56). Each memory figure comes from a fresh process.\n"
        "* emulated: linked = a new cancellable or stop_source plus one handler or stop_callback per\n"
        "parent that cancels it; deadline = a GSource timeout attached to an idle GMainContext.\n");
}

} // namespace

int main(int argc, char **argv)
{
    int mem_row = -1, mem_col = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            shrink = 10;
        else if (strcmp(argv[i], "--memory-child") == 0 && i + 2 < argc) {
            mem_row = std::clamp(atoi(argv[i + 1]), 0, MEM_ROWS - 1);
            mem_col = std::clamp(atoi(argv[i + 2]), 0, NCOL - 1);
            i += 2;
        } else if (atoi(argv[i]) > 0)
            repeats = std::min(atoi(argv[i]), 1000);
    }
    live_src = cancel_source_new();
    live_tok = cancel_source_token(live_src);
    live_st = live_ss.get_token();
    for (int j = 0; j < 2; j++) {
        par_src[j] = cancel_source_new();
        par_tok[j] = cancel_source_token(par_src[j]);
        par_st[j] = par_ss[j].get_token();
    }
#if COMPARE_HAVE_GLIB
    live_gc = g_cancellable_new();
    par_gc[0] = g_cancellable_new();
    par_gc[1] = g_cancellable_new();
    gctx = g_main_context_new();
#endif
    find_cpus();
    if (mem_row >= 0) {
        Fn f = mem_fn(mem_row, mem_col);
        Res res = f ? f() : Res(NAN);
        printf("%.6f %.6f\n", res.v, res.extra);
    } else {
        run_all();
    }

    cancel_source_free(live_src);
    cancel_source_free(par_src[0]);
    cancel_source_free(par_src[1]);
#if COMPARE_HAVE_GLIB
    g_object_unref(live_gc);
    g_object_unref(par_gc[0]);
    g_object_unref(par_gc[1]);
    g_main_context_unref(gctx);
#endif
    return 0;
}
