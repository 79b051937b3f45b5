/*
 * The latency workloads of /bin/peer for `cargo xtask bench latency`
 * (declared in latency.h; peer.c dispatches to them):
 *
 *   peer sleep-lateness N PERIOD_US   max(N/10, 10) unmeasured times, then
 *                          N times: read CLOCK_MONOTONIC, sleep PERIOD_US with
 *                          a relative clock_nanosleep, read it again;
 *                          lateness = wake time - (start + period). Prints
 *                          {"bench":"sleep-lateness","iterations":N,
 *                          "warmup":W,"period_us":P,"lateness_us":{"p50",
 *                          "p99","max","mean"}} (nearest-rank quantiles), as
 *                          apps/bench sleep-lateness does for our guests
 *   peer spin              computes forever (a CPU-bound neighbour)
 *   peer spinning K CMD... forks K `spin` processes, runs `peer CMD...`
 *                          beside them, kills them; exits with CMD's status
 *   peer echo-pair PORT ARGS...  brings lo up, starts `peer echo-server PORT`,
 *                          runs `peer echo-client 127.0.0.1 PORT ARGS...`
 *                          against it (bench net's pair), stops the server
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "latency.h"
#include "net.h"

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* Nearest rank of q in sorted v[0..n). */
static long long rank(const long long *v, long n, double q) {
    long i = (long)(q * (double)n + 0.999999) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* One sleep of period_us; returns its lateness in ns. */
static long long sleep_once(long period_us) {
    struct timespec period = {.tv_sec = period_us / 1000000, .tv_nsec = (period_us % 1000000) * 1000};
    long long start = mono_ns();
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &period, NULL) != 0) {
    }
    long long l = mono_ns() - (start + period_us * 1000LL);
    return l < 0 ? 0 : l;
}

int sleep_lateness(long n, long period_us) {
    long long *late = calloc((size_t)n, sizeof *late);
    if (!late)
        return 1;
    long warmup = n / 10 < 10 ? 10 : n / 10;
    for (long i = 0; i < warmup; i++)
        sleep_once(period_us);
    double sum = 0;
    for (long i = 0; i < n; i++) {
        late[i] = sleep_once(period_us);
        sum += (double)late[i];
    }
    qsort(late, (size_t)n, sizeof *late, cmp_ll);
    printf("{\"bench\":\"sleep-lateness\",\"iterations\":%ld,\"warmup\":%ld,\"period_us\":%ld,"
           "\"lateness_us\":{\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f,\"mean\":%.1f}}\n",
           n, warmup, period_us, rank(late, n, 0.5) / 1e3, rank(late, n, 0.99) / 1e3, late[n - 1] / 1e3, sum / (double)n / 1e3);
    fflush(stdout);
    free(late);
    return 0;
}

int spin(void) {
    volatile unsigned long x = 0;
    for (;;)
        x++;
}

/* Forks a child that runs fn(arg) and exits with its status. */
static pid_t child(int (*fn)(void *), void *arg) {
    pid_t pid = fork();
    if (pid == 0)
        _exit(fn(arg));
    return pid;
}

static int spin_child(void *unused) {
    (void)unused;
    return spin();
}

int spinning(long k, int argc, char **argv, int (*run)(int, char **)) {
    pid_t *pids = calloc((size_t)k, sizeof *pids);
    if (!pids)
        return 1;
    for (long i = 0; i < k; i++)
        pids[i] = child(spin_child, NULL);
    int status = run(argc, argv);
    for (long i = 0; i < k; i++)
        if (pids[i] > 0)
            kill(pids[i], SIGKILL);
    for (long i = 0; i < k; i++)
        if (pids[i] > 0)
            waitpid(pids[i], NULL, 0);
    free(pids);
    return status;
}

static int server_child(void *port) {
    return echo_server(*(int *)port);
}

int echo_pair(int port, int argc, char **argv) {
    if (loopback_up() != 0) {
        perror("peer echo-pair: lo up");
        return 1;
    }
    pid_t server = child(server_child, &port);
    if (server < 0)
        return 1;
    /* echo-client IP PORT ARGS... */
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    char **args = calloc((size_t)argc + 3, sizeof *args);
    args[0] = "127.0.0.1";
    args[1] = port_s;
    for (int i = 0; i < argc; i++)
        args[i + 2] = argv[i];
    int status = echo_client(argc + 2, args);
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    free(args);
    return status;
}
