/*
 * Makes the kernel answer what it rarely does, for tests: a seccomp filter
 * that fails one system call with a chosen errno, or makes it return 0
 * without running it, optionally only when one of its arguments has a given
 * value. Filters can never be removed, and a thread's filters pass to the
 * threads it creates afterwards, so a test installs them in a child of fork
 * (run_filtered) that runs the case and exits. Needs no privilege
 * (PR_SET_NO_NEW_PRIVS); a kernel without seccomp filters fails the test.
 */
#ifndef CANCEL_TEST_SECCOMP_UTIL_H
#define CANCEL_TEST_SECCOMP_UTIL_H

#include "../check.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#if defined(__x86_64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#elif defined(__riscv) && __riscv_xlen == 64
#define TEST_AUDIT_ARCH AUDIT_ARCH_RISCV64
#endif

/* `arg` for a filter that matches whatever the arguments. */
#define SECCOMP_ANY_ARG (-1)

/* From now on, in the calling thread and the threads it creates, system
 * call `nr` returns -1 with errno `err` (err 0: returns 0) without running,
 * when argument `arg` (0-5, or SECCOMP_ANY_ARG) equals `val` in its low 32
 * bits. Other system calls, and other values, run as usual. */
static inline void seccomp_refuse(long nr, int arg, uint32_t val, int err)
{
#ifndef TEST_AUDIT_ARCH
    (void)nr, (void)arg, (void)val, (void)err;
    fprintf(stderr, "no seccomp filter for this architecture in the test\n");
    abort();
#else
    /* The low 32 bits of a 64-bit argument: first in memory on the
     * little-endian architectures above. */
    uint32_t at = (uint32_t)offsetof(struct seccomp_data, args[arg < 0 ? 0 : arg]);
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TEST_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nr, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* Skipped for SECCOMP_ANY_ARG: */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, at),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, val, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((uint32_t)err & SECCOMP_RET_DATA)),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof *f), f};
    if (arg < 0)
        f[4].jt = 4; /* the call matched: straight to the refusal */
    CHECK_EQ(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
    CHECK_EQ(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0);
#endif
}

/* Runs `fn` in a child of fork (test_in_child): the child's filters die
 * with it. */
static inline void run_filtered(void (*fn)(void))
{
    test_in_child(fn);
}

#endif
