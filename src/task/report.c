/*
 * Stats and reports of groups: who got the request, how fast each task
 * answered, who ignored it.
 *
 * A report is a snapshot taken while tasks run: each task's fields are
 * relaxed atomics read once into a `snap`, its state with acquire order
 * first. Nested groups are reached under cancel__tree_mu, held for the
 * whole report so that none is freed mid-walk; what a running task is
 * blocked in, and its thread's CPU clock, are read under its pool's
 * report_mu, which its thread takes before it ends (lock order: tree_mu,
 * then report_mu). The report is rendered into memory and written with one
 * fwrite after every lock is released, so a slow FILE never holds a lock.
 *
 * Times in reports are relative to the creation of the reported group (its
 * "epoch"), on cancel_now()'s clock.
 */
#include "task_internal.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

/* ---- snapshots ---- */

struct snap {
    const struct cancel__record *rec;
    cancel_task_state state;
    int result;
    int64_t queued, started, ended, cancelled;
    int64_t response;  /* ended - cancelled, when the request came before the return */
    int64_t cpu_after; /* CPU time since the request (until the return, or now) */
    int64_t ignored;   /* stragglers: how long the request has been (was) ignored */
    bool straggler;
    const char *blocked; /* what it is blocked in now (running) */
    int blocked_fd;
    const char *blocked_req; /* what it was blocked in when asked */
    int blocked_req_fd;
};

static int64_t cpu_now(const struct cancel__worker *w)
{
    struct timespec ts;
    if (!w->has_cpu_clock || clock_gettime(w->cpu_clock, &ts) != 0)
        return CANCEL__NO_TIME;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void take_snap(struct snap *s, const struct cancel__record *rec, const struct cancel_group *g,
                      int64_t now, int64_t grace)
{
    const struct cancel_task *t = &rec->t;
    memset(s, 0, sizeof *s);
    s->rec = rec;
    /* acquire: pairs with the state moves (pool.c); the fields written
     * before them are visible. */
    s->state = cancel__task_state(atomic_load_explicit(&t->state, memory_order_acquire));
    s->result = atomic_load_explicit(&t->result, memory_order_relaxed);
    s->queued = atomic_load_explicit(&rec->queued, memory_order_relaxed);
    s->started = atomic_load_explicit(&rec->started, memory_order_relaxed);
    s->ended = atomic_load_explicit(&rec->ended, memory_order_relaxed);
    s->cancelled = atomic_load_explicit(&rec->cancelled, memory_order_relaxed);
    if (s->cancelled == CANCEL__NOT_ASKED)
        s->cancelled = CANCEL__NO_TIME;
    s->response = CANCEL__NO_TIME;
    s->cpu_after = CANCEL__NO_TIME;
    s->ignored = CANCEL__NO_TIME;
    s->blocked_fd = -1;
    s->blocked_req = atomic_load_explicit(&rec->blocked_at_request, memory_order_relaxed);
    s->blocked_req_fd = atomic_load_explicit(&rec->blocked_fd_at_request, memory_order_relaxed);
    bool ended = s->state >= CANCEL_TASK_COMPLETED;
    if (!ended)
        s->ended = CANCEL__NO_TIME; /* not written yet, or a stale read */
    bool asked = s->cancelled != CANCEL__NO_TIME;
    if (!asked)
        s->blocked_req = NULL; /* written by a note since withdrawn */
    if (ended && asked && s->ended != CANCEL__NO_TIME && s->cancelled <= s->ended) {
        s->response = s->ended - s->cancelled;
        int64_t at = atomic_load_explicit(&rec->cpu_at_request, memory_order_relaxed);
        int64_t end = atomic_load_explicit(&rec->cpu_at_end, memory_order_relaxed);
        if (at != CANCEL__NO_TIME && end != CANCEL__NO_TIME)
            s->cpu_after = end > at ? end - at : 0;
        /* The CPU clock is read a little after the request is noted and
         * the thread's own clock a little after it returns: one thread
         * cannot use more CPU than the time between. */
        if (s->cpu_after > s->response)
            s->cpu_after = s->response;
    }
    if (s->state == CANCEL_TASK_RUNNING) {
        struct cancel_pool *p = g->pool;
        pthread_mutex_lock(&p->report_mu);
        struct cancel__worker *w = atomic_load_explicit(&t->worker, memory_order_relaxed);
        /* Still running, on a thread that has not ended (blocked set). */
        if (w && w->blocked &&
            cancel__task_state(atomic_load_explicit(&t->state, memory_order_acquire)) == CANCEL_TASK_RUNNING) {
            const char *nested = atomic_load_explicit(&t->nested_in, memory_order_relaxed);
            if (nested) {
                s->blocked = nested;
            } else if (atomic_load_explicit(&w->current, memory_order_relaxed) == t) {
                /* acquire: pairs with cancel__blocked_enter's release (the fd). */
                s->blocked = atomic_load_explicit(&w->blocked->what, memory_order_acquire);
                if (s->blocked)
                    s->blocked_fd = atomic_load_explicit(&w->blocked->fd, memory_order_relaxed);
            }
            int64_t at = atomic_load_explicit(&rec->cpu_at_request, memory_order_relaxed);
            int64_t cpu = at != CANCEL__NO_TIME ? cpu_now(w) : CANCEL__NO_TIME;
            if (cpu != CANCEL__NO_TIME)
                s->cpu_after = cpu > at ? cpu - at : 0;
            if (s->cpu_after != CANCEL__NO_TIME && s->cancelled != CANCEL__NO_TIME &&
                s->cpu_after > now - s->cancelled)
                s->cpu_after = now > s->cancelled ? now - s->cancelled : 0;
        }
        pthread_mutex_unlock(&p->report_mu);
    }
    if (asked && grace >= 0 && s->started != CANCEL__NO_TIME) {
        int64_t until = s->state == CANCEL_TASK_RUNNING ? now : s->ended;
        if (until != CANCEL__NO_TIME && until - s->cancelled >= grace) {
            s->straggler = true;
            s->ignored = until - s->cancelled;
        }
    }
}

/* The group's tasks, oldest first, in a malloc'd array (NULL + *n = 0 for
 * none; NULL with *n > 0 on ENOMEM). */
static struct snap *snap_group(const struct cancel_group *g, int64_t now, size_t *n)
{
    int64_t grace = atomic_load_explicit(&g->grace, memory_order_relaxed);
    /* acquire: pairs with the release of the spawn that listed the task. */
    struct cancel__record *head = atomic_load_explicit(&g->tasks, memory_order_acquire);
    size_t count = 0;
    for (struct cancel__record *rec = head; rec; rec = rec->gnext)
        count++;
    *n = count;
    if (count == 0)
        return NULL;
    struct snap *s = malloc(count * sizeof *s);
    if (!s)
        return NULL;
    size_t i = count;
    for (struct cancel__record *rec = head; rec; rec = rec->gnext)
        take_snap(&s[--i], rec, g, now, grace);
    return s;
}

int cancel_group_stats_get(const cancel_group *g, cancel_group_stats *out)
{
    if (!g || !out)
        return EINVAL;
    memset(out, 0, sizeof *out);
    int64_t now = cancel_now();
    int64_t grace = atomic_load_explicit(&g->grace, memory_order_relaxed);
    for (struct cancel__record *rec = atomic_load_explicit(&g->tasks, memory_order_acquire); rec;
         rec = rec->gnext) {
        switch (cancel__task_state(atomic_load_explicit(&rec->t.state, memory_order_acquire))) {
        case CANCEL_TASK_PENDING:
            out->pending++;
            break;
        case CANCEL_TASK_RUNNING: {
            out->running++;
            int64_t c = atomic_load_explicit(&rec->cancelled, memory_order_relaxed);
            if (grace >= 0 && c != CANCEL__NO_TIME && c != CANCEL__NOT_ASKED && now - c >= grace)
                out->stragglers++;
            break;
        }
        case CANCEL_TASK_COMPLETED:
            out->completed++;
            break;
        case CANCEL_TASK_CANCELED:
            out->canceled++;
            break;
        case CANCEL_TASK_FAILED:
            out->failed++;
            break;
        }
    }
    return 0;
}

/* ---- words ---- */

static const char *state_name(cancel_task_state s)
{
    switch (s) {
    case CANCEL_TASK_PENDING:
        return "pending";
    case CANCEL_TASK_RUNNING:
        return "running";
    case CANCEL_TASK_COMPLETED:
        return "completed";
    case CANCEL_TASK_CANCELED:
        return "canceled";
    case CANCEL_TASK_FAILED:
        return "failed";
    }
    return "unknown";
}

/* "EIO", or NULL if the number is no errno value we can name. */
static const char *errno_name(int e)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    return e == 0 ? "0" : strerrorname_np(e);
#else
    return e == 0 ? "0" : NULL;
#endif
}

static const char *signal_name(int sig)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    return sigabbrev_np(sig);
#else
    (void)sig;
    return NULL;
#endif
}

struct counts {
    size_t pending, running, completed, canceled, failed, stragglers;
};

static struct counts count_snaps(const struct snap *s, size_t n)
{
    struct counts c = {0, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        switch (s[i].state) {
        case CANCEL_TASK_PENDING:
            c.pending++;
            break;
        case CANCEL_TASK_RUNNING:
            c.running++;
            c.stragglers += s[i].straggler;
            break;
        case CANCEL_TASK_COMPLETED:
            c.completed++;
            break;
        case CANCEL_TASK_CANCELED:
            c.canceled++;
            break;
        case CANCEL_TASK_FAILED:
            c.failed++;
            break;
        }
    }
    return c;
}

static const char *group_state(const struct cancel_group *g, int result)
{
    if (result < 0)
        return cancel_token_is_requested(cancel_source_token(g->src)) ? "canceling" : "running";
    if (result == 0)
        return "completed";
    return result == ECANCELED && atomic_load_explicit(&g->first_error, memory_order_relaxed) == 0 ? "canceled"
                                                                                                   : "failed";
}

/* ---- text ---- */

#define CELL 200 /* the longest cell, names included */

static void fmt_dur(char *buf, size_t size, int64_t ns)
{
    if (ns == CANCEL__NO_TIME)
        snprintf(buf, size, "-");
    else if (ns < 1000)
        snprintf(buf, size, "%lld ns", (long long)ns);
    else if (ns < 999950) /* below what would round up to 1000.0 us */
        snprintf(buf, size, "%.1f us", ns / 1e3);
    else if (ns < 999995000)
        snprintf(buf, size, "%.2f ms", ns / 1e6);
    else
        snprintf(buf, size, "%.3f s", ns / 1e9);
}

static void fmt_at(char *buf, size_t size, int64_t t, int64_t epoch)
{
    if (t == CANCEL__NO_TIME) {
        snprintf(buf, size, "-");
        return;
    }
    buf[0] = '+';
    fmt_dur(buf + 1, size - 1, t - epoch);
}

/* A name for the text report: control characters shown as \n, \t or \xNN,
 * so that a name cannot break the table or talk to a terminal. */
static void fmt_name(char *buf, size_t size, const char *name)
{
    if (!name) {
        snprintf(buf, size, "(unnamed)");
        return;
    }
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)name; *p && n + 5 < size; p++) {
        if (*p == '\n')
            n += (size_t)snprintf(buf + n, size - n, "\\n");
        else if (*p == '\t')
            n += (size_t)snprintf(buf + n, size - n, "\\t");
        else if (*p < 0x20 || *p == 0x7f)
            n += (size_t)snprintf(buf + n, size - n, "\\x%02x", *p);
        else
            buf[n++] = (char)*p;
    }
    buf[n] = '\0';
}

static void fmt_blocked(char *buf, size_t size, const char *what, int fd)
{
    if (fd >= 0)
        snprintf(buf, size, "%s fd %d", what, fd);
    else
        snprintf(buf, size, "%s", what);
}

static void fmt_cause(char *buf, size_t size, cancel_cause c)
{
    int n = snprintf(buf, size, "%s", cancel_reason_name(c.reason));
    if (c.reason == CANCEL_REASON_FAILED) {
        const char *e = errno_name(c.code);
        n += e ? snprintf(buf + n, size - (size_t)n, " %s", e) : snprintf(buf + n, size - (size_t)n, " %d", c.code);
    } else if (c.reason == CANCEL_REASON_SIGNAL) {
        const char *s = signal_name(c.code);
        n += s ? snprintf(buf + n, size - (size_t)n, " SIG%s", s) : snprintf(buf + n, size - (size_t)n, " %d", c.code);
    }
    char text[CELL];
    if (c.message && (size_t)n < size) {
        fmt_name(text, sizeof text, c.message);
        n += snprintf(buf + n, size - (size_t)n, " \"%s\"", text);
    }
    if (c.origin && (size_t)n < size) {
        fmt_name(text, sizeof text, c.origin);
        snprintf(buf + n, size - (size_t)n, " (origin \"%s\")", text);
    }
}

enum { COL_TASK, COL_STATE, COL_RESULT, COL_QUEUED, COL_STARTED, COL_ENDED, COL_RESPONSE, COL_CPU, COL_NOTE, NCOL };
static const char *const col_title[NCOL] = {"TASK",  "STATE",    "RESULT",    "QUEUED", "STARTED",
                                            "ENDED", "RESPONSE", "CPU AFTER", "NOTE"};

static void task_cells(char cells[NCOL][CELL], const struct snap *s, int64_t epoch, bool first_failure)
{
    fmt_name(cells[COL_TASK], CELL, s->rec->name);
    snprintf(cells[COL_STATE], CELL, "%s", state_name(s->state));
    if (s->state >= CANCEL_TASK_COMPLETED) {
        const char *e = errno_name(s->result);
        if (e)
            snprintf(cells[COL_RESULT], CELL, "%s", e);
        else
            snprintf(cells[COL_RESULT], CELL, "%d", s->result);
    } else {
        snprintf(cells[COL_RESULT], CELL, "-");
    }
    fmt_at(cells[COL_QUEUED], CELL, s->queued, epoch);
    fmt_at(cells[COL_STARTED], CELL, s->started, epoch);
    fmt_at(cells[COL_ENDED], CELL, s->ended, epoch);
    fmt_dur(cells[COL_RESPONSE], CELL, s->response);
    fmt_dur(cells[COL_CPU], CELL, s->cpu_after);
    char *note = cells[COL_NOTE];
    size_t n = 0;
    note[0] = '\0';
    char b[CELL];
    if (s->straggler) {
        fmt_dur(b, sizeof b, s->ignored);
        n += (size_t)snprintf(note + n, CELL - n, "STRAGGLER: %s the request for %s",
                              s->state == CANCEL_TASK_RUNNING ? "ignoring" : "ignored", b);
        /* What it did meanwhile: its CPU time over that time. */
        int share = s->cpu_after != CANCEL__NO_TIME && s->ignored > 0
                        ? (int)((double)s->cpu_after * 100 / (double)s->ignored + 0.5)
                        : -1;
        bool burning = share >= 50;
        if (share >= 0 && n < CELL)
            n += (size_t)snprintf(note + n, CELL - n, burning ? ", burning CPU (%d%%)" : ", on CPU %d%% of it",
                                  share);
        if (s->state != CANCEL_TASK_RUNNING && s->blocked_req && n < CELL) {
            fmt_blocked(b, sizeof b, s->blocked_req, s->blocked_req_fd);
            n += (size_t)snprintf(note + n, CELL - n, ", asked while in %s", b);
        }
        if (s->state == CANCEL_TASK_RUNNING && !s->blocked && !burning && n < CELL)
            n += (size_t)snprintf(note + n, CELL - n, ", blocked outside the library");
    }
    if (s->state == CANCEL_TASK_RUNNING && s->blocked && n < CELL) {
        fmt_blocked(b, sizeof b, s->blocked, s->blocked_fd);
        n += (size_t)snprintf(note + n, CELL - n, "%sin %s", n ? ", " : "", b);
    } else if (!s->straggler && s->blocked_req && n < CELL) {
        fmt_blocked(b, sizeof b, s->blocked_req, s->blocked_req_fd);
        n += (size_t)snprintf(note + n, CELL - n, "%sasked while in %s", n ? ", " : "", b);
    }
    if (first_failure && n < CELL)
        snprintf(note + n, CELL - n, "%sfirst failure: cancelled the group", n ? ", " : "");
}

static void text_row(FILE *f, int indent, const char *const cell[NCOL], const size_t width[NCOL])
{
    fprintf(f, "%*s  ", indent, "");
    for (int k = 0; k < COL_NOTE; k++) {
        bool left = k <= COL_RESULT;
        fprintf(f, left ? "%-*s" : "%*s", (int)width[k], cell[k]);
        if (k + 1 < COL_NOTE || cell[COL_NOTE][0])
            fputs("  ", f);
    }
    fprintf(f, "%s\n", cell[COL_NOTE]);
}

static int text_group(FILE *f, const struct cancel_group *g, int64_t epoch, int64_t now, int indent);

static int text_nested(FILE *f, const struct cancel_group *child, int64_t epoch, int64_t now, int indent)
{
    for (; child; child = child->sib_next) {
        int err = text_group(f, child, epoch, now, indent);
        if (err)
            return err;
    }
    return 0;
}

static int text_group(FILE *f, const struct cancel_group *g, int64_t epoch, int64_t now, int indent)
{
    size_t n;
    struct snap *s = snap_group(g, now, &n);
    if (!s && n)
        return ENOMEM;
    struct counts c = count_snaps(s, n);
    int result = cancel__group_result(g);
    char cause[512] = "";
    cancel_cause cc = cancel_token_cause(cancel_source_token(g->src));
    if (cc.reason != CANCEL_REASON_NONE) {
        char at[64];
        fmt_at(at, sizeof at, atomic_load_explicit(&g->cancelled, memory_order_relaxed), epoch);
        int k = snprintf(cause, sizeof cause, "; cancelled at %s: ", at);
        fmt_cause(cause + k, sizeof cause - (size_t)k, cc);
    }
    char name[CELL];
    fmt_name(name, sizeof name, g->name);
    fprintf(f, "%*sgroup \"%s\": %s%s\n", indent, "", name, group_state(g, result), cause);
    int64_t grace = atomic_load_explicit(&g->grace, memory_order_relaxed);
    char gr[64];
    fmt_dur(gr, sizeof gr, grace);
    fprintf(f, "%*s  %zu task%s: %zu pending, %zu running, %zu completed, %zu canceled, %zu failed", indent, "", n,
            n == 1 ? "" : "s", c.pending, c.running, c.completed, c.canceled, c.failed);
    if (grace >= 0)
        fprintf(f, "; %zu straggler%s now (grace %s)\n", c.stragglers, c.stragglers == 1 ? "" : "s", gr);
    else
        fprintf(f, "\n");

    if (n) {
        char(*cells)[NCOL][CELL] = malloc(n * sizeof *cells);
        if (!cells) {
            free(s);
            return ENOMEM;
        }
        size_t width[NCOL];
        for (int k = 0; k < NCOL; k++)
            width[k] = strlen(col_title[k]);
        const struct cancel__record *first = atomic_load_explicit(&g->first_failed, memory_order_relaxed);
        for (size_t i = 0; i < n; i++) {
            task_cells(cells[i], &s[i], epoch, s[i].rec == first);
            for (int k = 0; k < NCOL; k++) {
                size_t w = strlen(cells[i][k]);
                if (w > width[k])
                    width[k] = w;
            }
        }
        /* Names and words to the left, numbers to the right; no note, no
         * trailing blanks. */
        const char *titles[NCOL];
        for (int k = 0; k < NCOL; k++)
            titles[k] = col_title[k];
        text_row(f, indent, titles, width);
        for (size_t i = 0; i < n; i++) {
            const char *row[NCOL];
            for (int k = 0; k < NCOL; k++)
                row[k] = cells[i][k];
            text_row(f, indent, row, width);
            int err = text_nested(f, s[i].rec->children, epoch, now, indent + 6);
            if (err) {
                free(cells);
                free(s);
                return err;
            }
        }
        free(cells);
    }
    free(s);
    return text_nested(f, g->children, epoch, now, indent + 2);
}

/* ---- JSON ---- */

/* Writes s as a JSON string (null for NULL): quotes, backslashes and
 * control characters escaped, valid UTF-8 passed through, each byte of an
 * invalid sequence replaced by U+FFFD. */
static void json_str(FILE *f, const char *s)
{
    if (!s) {
        fputs("null", f);
        return;
    }
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', f);
    while (*p) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            switch (c) {
            case '\n':
                fputs("\\n", f);
                break;
            case '\t':
                fputs("\\t", f);
                break;
            case '\r':
                fputs("\\r", f);
                break;
            case '\b':
                fputs("\\b", f);
                break;
            case '\f':
                fputs("\\f", f);
                break;
            default:
                fprintf(f, "\\u%04x", c);
            }
            p++;
        } else if (c < 0x80) {
            fputc(c, f);
            p++;
        } else {
            /* A UTF-8 sequence: its length, its range, no surrogates. */
            int len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
            if (c >= 0xf5)
                len = 0;
            uint32_t cp = len == 4 ? c & 0x07u : len == 3 ? c & 0x0fu : c & 0x1fu;
            for (int i = 1; i < len; i++) {
                if ((p[i] & 0xc0) != 0x80) {
                    len = 0;
                    break;
                }
                cp = cp << 6 | (p[i] & 0x3fu);
            }
            if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
                (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
                len = 0;
            if (len == 0) {
                fputs("\\ufffd", f);
                p++;
            } else {
                fwrite(p, 1, (size_t)len, f);
                p += len;
            }
        }
    }
    fputc('"', f);
}

static void json_time(FILE *f, int64_t t, int64_t epoch)
{
    if (t == CANCEL__NO_TIME)
        fputs("null", f);
    else
        fprintf(f, "%lld", (long long)(t - epoch));
}

static void json_blocked(FILE *f, const char *what, int fd)
{
    char b[CELL];
    if (!what) {
        fputs("null", f);
        return;
    }
    fmt_blocked(b, sizeof b, what, fd);
    json_str(f, b);
}

static int json_group(FILE *f, const struct cancel_group *g, int64_t epoch, int64_t now, const char *extra);

static int json_nested(FILE *f, const struct cancel_group *child, int64_t epoch, int64_t now)
{
    fputc('[', f);
    for (bool first = true; child; child = child->sib_next, first = false) {
        if (!first)
            fputc(',', f);
        int err = json_group(f, child, epoch, now, "");
        if (err)
            return err;
    }
    fputc(']', f);
    return 0;
}

static int json_task(FILE *f, const struct snap *s, int64_t epoch, int64_t now, bool first_failure)
{
    bool ended = s->state >= CANCEL_TASK_COMPLETED;
    fputs("{\"name\":", f);
    json_str(f, s->rec->name);
    fprintf(f, ",\"state\":\"%s\",\"result\":", state_name(s->state));
    if (ended)
        fprintf(f, "%d", s->result);
    else
        fputs("null", f);
    fputs(",\"error\":", f);
    json_str(f, ended ? errno_name(s->result) : NULL);
    fputs(",\"queued_ns\":", f);
    json_time(f, s->queued, epoch);
    fputs(",\"started_ns\":", f);
    json_time(f, s->started, epoch);
    fputs(",\"ended_ns\":", f);
    json_time(f, s->ended, epoch);
    fputs(",\"cancelled_ns\":", f);
    json_time(f, s->cancelled, epoch);
    fputs(",\"response_ns\":", f);
    json_time(f, s->response, 0);
    fputs(",\"cpu_after_request_ns\":", f);
    json_time(f, s->cpu_after, 0);
    fprintf(f, ",\"straggler\":%s,\"ignored_ns\":", s->straggler ? "true" : "false");
    json_time(f, s->ignored, 0);
    fputs(",\"blocked_in\":", f);
    json_blocked(f, s->state == CANCEL_TASK_RUNNING ? s->blocked : NULL, s->blocked_fd);
    fputs(",\"blocked_at_request\":", f);
    json_blocked(f, s->blocked_req, s->blocked_req_fd);
    fprintf(f, ",\"first_failure\":%s,\"groups\":", first_failure ? "true" : "false");
    int err = json_nested(f, s->rec->children, epoch, now);
    fputc('}', f);
    return err;
}

/* `extra`: members the root object carries before the group's own. */
static int json_group(FILE *f, const struct cancel_group *g, int64_t epoch, int64_t now, const char *extra)
{
    size_t n;
    struct snap *s = snap_group(g, now, &n);
    if (!s && n)
        return ENOMEM;
    struct counts c = count_snaps(s, n);
    int result = cancel__group_result(g);
    fprintf(f, "{%s\"name\":", extra);
    json_str(f, g->name);
    fprintf(f, ",\"state\":\"%s\",\"result\":", group_state(g, result));
    if (result >= 0)
        fprintf(f, "%d", result);
    else
        fputs("null", f);
    fputs(",\"cause\":", f);
    cancel_cause cc = cancel_token_cause(cancel_source_token(g->src));
    if (cc.reason == CANCEL_REASON_NONE) {
        fputs("null", f);
    } else {
        fprintf(f, "{\"reason\":\"%s\",\"code\":%d,\"message\":", cancel_reason_name(cc.reason), cc.code);
        json_str(f, cc.message);
        fputs(",\"origin\":", f);
        json_str(f, cc.origin);
        fputc('}', f);
    }
    fputs(",\"created_ns\":", f);
    json_time(f, atomic_load_explicit(&g->created, memory_order_relaxed), epoch);
    fputs(",\"cancelled_ns\":", f);
    json_time(f, atomic_load_explicit(&g->cancelled, memory_order_relaxed), epoch);
    int64_t grace = atomic_load_explicit(&g->grace, memory_order_relaxed);
    fputs(",\"grace_ns\":", f);
    json_time(f, grace < 0 ? CANCEL__NO_TIME : grace, 0);
    fprintf(f,
            ",\"stats\":{\"pending\":%zu,\"running\":%zu,\"completed\":%zu,\"canceled\":%zu,\"failed\":%zu,"
            "\"stragglers\":%zu},\"tasks\":[",
            c.pending, c.running, c.completed, c.canceled, c.failed, c.stragglers);
    const struct cancel__record *first = atomic_load_explicit(&g->first_failed, memory_order_relaxed);
    int err = 0;
    for (size_t i = 0; i < n && !err; i++) {
        if (i)
            fputc(',', f);
        err = json_task(f, &s[i], epoch, now, s[i].rec == first);
    }
    free(s);
    if (err)
        return err;
    fputs("],\"groups\":", f);
    err = json_nested(f, g->children, epoch, now);
    fputc('}', f);
    return err;
}

int cancel_group_report(const cancel_group *g, FILE *out, unsigned format)
{
    if (!g || !out || (format != CANCEL_REPORT_TEXT && format != CANCEL_REPORT_JSON))
        return EINVAL;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return ENOMEM;
    int64_t epoch = atomic_load_explicit(&g->created, memory_order_relaxed);
    int64_t now = cancel_now();
    cancel_stats st;
    (void)cancel_get_stats(&st);
    pthread_mutex_lock(&cancel__tree_mu);
    int err;
    if (format == CANCEL_REPORT_TEXT) {
        err = text_group(f, g, epoch, now, 0);
        char el[64];
        fmt_dur(el, sizeof el, now - epoch);
        fprintf(f, "(times from the group's creation; report taken at +%s", el);
        if (st.slow_callbacks)
            fprintf(f, "; slow cancellation callbacks so far: %zu", st.slow_callbacks);
        fprintf(f, ")\n");
    } else {
        /* The document is the group, with the report's own members first. */
        char extra[160];
        snprintf(extra, sizeof extra, "\"report_ns\":%lld,\"epoch_ns\":%lld,\"slow_callbacks\":%zu,",
                 (long long)(now - epoch), (long long)epoch, st.slow_callbacks);
        err = json_group(f, g, epoch, now, extra);
        fputc('\n', f);
    }
    pthread_mutex_unlock(&cancel__tree_mu);
    if (fclose(f) != 0 && !err)
        err = ENOMEM;
    if (!err && fwrite(buf, 1, len, out) != len)
        err = EIO;
    if (!err && fflush(out) != 0)
        err = EIO;
    free(buf);
    return err;
}
