/*
 * Reporting misuse (CANCEL_DEBUG builds only) and the one condition the
 * library cannot survive. Async-signal-safe: cancel_async checks its
 * argument too.
 */
#include "source.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void put(const char *s)
{
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

void cancel__fatal(const char *problem)
{
    put("libcancel: fatal: ");
    put(problem);
    put("\n");
    abort();
}

void cancel__misuse(const char *function, const char *problem, const void *object)
{
    char hex[2 + 2 * sizeof(uintptr_t) + 1];
    uintptr_t v = (uintptr_t)object;
    int n = (int)sizeof hex - 1;
    hex[n] = 0;
    do {
        hex[--n] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v && n > 2);
    hex[--n] = 'x';
    hex[--n] = '0';
    put("libcancel: misuse in ");
    put(function);
    put("(): ");
    put(problem);
    put(" (object ");
    put(hex + n);
    put(")\n");
    abort();
}
