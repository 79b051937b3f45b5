/*
 * The Linux peer's benchmark program for `cargo xtask bench` (see
 * xtask/src/linux.rs). Compiled on the host with `gcc -static -O2` and put
 * into the peer's initramfs as /bin/peer; /init runs it. Every result is one
 * JSON line on stdout (the serial console).
 *
 *   peer getppid N ROUNDS  null system call: ROUNDS rounds of N getppid()
 *                          calls after a warm-up, timed with rdtsc; reports
 *                          the median (and the minimum) of the rounds'
 *                          cycles per call
 *   peer spawn K           fork + exec of this static binary (`peer exit`)
 *                          + waitpid, K times after a warm-up, timed with
 *                          CLOCK_MONOTONIC; median wall time and spawns/s
 *   peer exit              exits 0 at once (the exec target)
 *   peer debug-exit CODE   ends QEMU through isa-debug-exit (port 0xf4):
 *                          QEMU exits with status (CODE << 1) | 1
 *   peer echo-server PORT, peer echo-client ..., peer http-load ...
 *                          the network workloads of `bench net` (net.c)
 *
 * The method (warm-up, rounds, median) is the same as apps/bench's, so the
 * two columns of the table measure the same thing.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include "net.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v and returns its median. */
static double median(double *v, int n) {
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static long number(const char *s, const char *what) {
    char *end;
    long v = s ? strtol(s, &end, 0) : 0;
    if (!s || *end || v <= 0) {
        fprintf(stderr, "peer: expected a positive number for %s\n", what);
        exit(2);
    }
    return v;
}

static int bench_getppid(long n, int rounds) {
    long warm = n / 10 < 1000 ? 1000 : n / 10;
    for (long i = 0; i < warm; i++)
        syscall(SYS_getppid);
    double *per_call = calloc(rounds, sizeof *per_call);
    for (int r = 0; r < rounds; r++) {
        uint64_t t0 = __rdtsc();
        for (long i = 0; i < n; i++)
            syscall(SYS_getppid);
        uint64_t t1 = __rdtsc();
        per_call[r] = (double)(t1 - t0) / (double)n;
    }
    printf("{\"bench\":\"getppid\",\"iterations\":%ld,\"rounds\":%d,\"round_cycles_per_call\":[",
           n, rounds);
    for (int r = 0; r < rounds; r++)
        printf("%s%.1f", r ? "," : "", per_call[r]);
    double med = median(per_call, rounds);
    printf("],\"cycles_per_call\":%.1f,\"min_cycles_per_call\":%.1f}\n", med, per_call[0]);
    fflush(stdout);
    return 0;
}

/* One fork + exec + wait; returns its wall time in ns, or -1. */
static double spawn_once(const char *self) {
    double t0 = now_ns();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        char *const argv[] = {(char *)self, "exit", NULL};
        char *const envp[] = {NULL};
        execve(self, argv, envp);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    return now_ns() - t0;
}

static int bench_spawn(const char *self, long k) {
    for (int i = 0; i < 3; i++)
        if (spawn_once(self) < 0) {
            fprintf(stderr, "peer: fork+exec of %s failed\n", self);
            return 1;
        }
    double *ns = calloc(k, sizeof *ns);
    double total = 0;
    for (long i = 0; i < k; i++) {
        ns[i] = spawn_once(self);
        if (ns[i] < 0) {
            fprintf(stderr, "peer: fork+exec of %s failed\n", self);
            return 1;
        }
        total += ns[i];
    }
    double med = median(ns, (int)k);
    printf("{\"bench\":\"spawn\",\"runs\":%ld,\"median_us\":%.1f,\"min_us\":%.1f,"
           "\"spawns_per_sec\":%.1f}\n",
           k, med / 1e3, ns[0] / 1e3, (double)k / (total / 1e9));
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "exit"))
        _exit(0);
    if (!strcmp(cmd, "getppid"))
        return bench_getppid(number(argc > 2 ? argv[2] : NULL, "N"),
                             (int)number(argc > 3 ? argv[3] : NULL, "ROUNDS"));
    if (!strcmp(cmd, "spawn"))
        return bench_spawn("/bin/peer", number(argc > 2 ? argv[2] : NULL, "K"));
    if (!strcmp(cmd, "debug-exit")) {
        long code = number(argc > 2 ? argv[2] : NULL, "CODE");
        if (ioperm(0xf4, 4, 1) != 0) {
            perror("peer: ioperm");
            return 1;
        }
        outb((unsigned char)code, 0xf4);
        return 1; /* still running: there is no isa-debug-exit device */
    }
    if (!strcmp(cmd, "echo-server"))
        return echo_server((int)number(argc > 2 ? argv[2] : NULL, "PORT"));
    if (!strcmp(cmd, "echo-client"))
        return echo_client(argc - 2, argv + 2);
    if (!strcmp(cmd, "http-load"))
        return http_load(argc - 2, argv + 2);
    fprintf(stderr, "usage: peer getppid N ROUNDS | spawn K | exit | debug-exit CODE | echo-server PORT |\n"
                    "       echo-client IP PORT CONNECTIONS MESSAGE_BYTES DURATION_MS|COUNTx |\n"
                    "       http-load IP PORT PATH CONNECTIONS DURATION_MS|COUNTx\n");
    return 2;
}
