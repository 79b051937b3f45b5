/*
 * The Linux peer's benchmark program for `cargo xtask bench` (see
 * xtask/src/linux/). Compiled on the host with `gcc -static -O2` and put
 * into the peer's initramfs as /bin/peer; /init runs it. Every result is one
 * JSON line on stdout (the serial console).
 *
 *   peer getppid N ROUNDS  null system call: ROUNDS rounds of N getppid()
 *                          calls after a warm-up, timed with rdtsc; reports
 *                          the median (and the minimum) of the rounds'
 *                          cycles per call
 *   peer poll-ready N ROUNDS  the same for poll() on an eventfd that is
 *                          always readable (returns at once)
 *   peer clock N ROUNDS    the same for clock_gettime(CLOCK_MONOTONIC)
 *                          (the vDSO: no system call)
 *   peer spawn K           fork + exec of this static binary (`peer exit`)
 *                          + waitpid, K times after a warm-up, timed with
 *                          CLOCK_MONOTONIC; median wall time and spawns/s
 *   peer exit              exits 0 at once (the exec target)
 *   peer density N         N idle busybox `nc` TCP echo listeners (ports
 *                          20000+i): fork+exec-to-listening time of each,
 *                          bare fork+exec+waitpid of `busybox true`,
 *                          MemAvailable before/after per process, PSS/RSS of
 *                          a sample, an echo through a random sample of 10
 *   peer debug-exit CODE   ends QEMU through isa-debug-exit (port 0xf4):
 *                          QEMU exits with status (CODE << 1) | 1
 *   peer echo-server PORT, peer echo-client ..., peer http-load ...,
 *   peer bulk-sink PORT, peer bulk-send ...
 *                          the network workloads of `bench net` (net.c)
 *   peer sleep-lateness N PERIOD_US, peer spin, peer spinning K CMD...,
 *   peer echo-pair PORT ...  the workloads of `bench latency` (latency.c)
 *
 * The method (warm-up, rounds, median) is the same as apps/bench's, so the
 * two columns of the table measure the same thing.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include "latency.h"
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

/* ROUNDS rounds of N calls of `call` after a warm-up, timed with rdtsc;
 * prints {"bench":NAME,...} with the median and minimum cycles per call. */
static int time_calls(const char *name, void (*call)(void), long n, int rounds) {
    long warm = n / 10 < 1000 ? 1000 : n / 10;
    for (long i = 0; i < warm; i++)
        call();
    double *per_call = calloc(rounds, sizeof *per_call);
    for (int r = 0; r < rounds; r++) {
        uint64_t t0 = __rdtsc();
        for (long i = 0; i < n; i++)
            call();
        uint64_t t1 = __rdtsc();
        per_call[r] = (double)(t1 - t0) / (double)n;
    }
    printf("{\"bench\":\"%s\",\"iterations\":%ld,\"rounds\":%d,\"round_cycles_per_call\":[",
           name, n, rounds);
    for (int r = 0; r < rounds; r++)
        printf("%s%.1f", r ? "," : "", per_call[r]);
    double med = median(per_call, rounds);
    printf("],\"cycles_per_call\":%.1f,\"min_cycles_per_call\":%.1f}\n", med, per_call[0]);
    fflush(stdout);
    free(per_call);
    return 0;
}

static void call_getppid(void) { syscall(SYS_getppid); }

/* An eventfd that is always readable: poll() on it returns at once, the
 * peer of a `block` hypercall with an event pending. */
static int ready_fd = -1;
static void call_poll_ready(void) {
    struct pollfd p = {.fd = ready_fd, .events = POLLIN};
    if (poll(&p, 1, -1) != 1)
        abort();
}

/* The vDSO's clock_gettime, the peer of the libos's `Instant::now`. */
static void call_clock(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    __asm__ volatile("" : : "r"(&t) : "memory");
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

/* ---- density: idle busybox nc echo listeners ---- */

#define BUSYBOX "/bin/busybox"
#define DENSITY_PORT 20000
/* Fork+exec samples of `busybox true` at most. */
#define DENSITY_TRUE_RUNS 1000
/* How long one listener may take to reach accept(), and the poll interval. */
#define LISTEN_TIMEOUT_NS 10e9
#define LISTEN_POLL_NS 20000

static void sleep_ns(long ns) {
    struct timespec ts = {.tv_sec = ns / 1000000000L, .tv_nsec = ns % 1000000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* The fields of /proc/meminfo the density benchmark reads, in bytes. */
struct meminfo {
    long long available, free, anon, page_tables, kernel_stack, slab, shmem;
};

static int read_meminfo(struct meminfo *m) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    static const struct {
        const char *key;
        size_t off;
    } keys[] = {
        {"MemAvailable:", offsetof(struct meminfo, available)},
        {"MemFree:", offsetof(struct meminfo, free)},
        {"AnonPages:", offsetof(struct meminfo, anon)},
        {"PageTables:", offsetof(struct meminfo, page_tables)},
        {"KernelStack:", offsetof(struct meminfo, kernel_stack)},
        {"Slab:", offsetof(struct meminfo, slab)},
        {"Shmem:", offsetof(struct meminfo, shmem)},
    };
    int found = 0;
    char line[256];
    memset(m, 0, sizeof *m);
    while (fgets(line, sizeof line, f)) {
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            size_t n = strlen(keys[k].key);
            if (!strncmp(line, keys[k].key, n)) {
                *(long long *)((char *)m + keys[k].off) = strtoll(line + n, NULL, 10) * 1024;
                found++;
            }
        }
    }
    fclose(f);
    return found == (int)(sizeof keys / sizeof keys[0]) ? 0 : -1;
}

/* sync, then drops the page cache, dentries and inodes; 0 if it worked. */
static int drop_caches(void) {
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd < 0)
        return -1;
    int ok = write(fd, "3\n", 2) == 2;
    close(fd);
    return ok ? 0 : -1;
}

/* Busy and total jiffies of all CPUs from /proc/stat. */
static int cpu_jiffies(unsigned long long *busy, unsigned long long *total) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 5)
        return -1;
    *total = 0;
    for (int i = 0; i < 8; i++)
        *total += v[i];
    *busy = *total - v[3] - v[4]; /* minus idle and iowait */
    return 0;
}

/* Brings the loopback interface up (/init does not). */
int loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0)
        return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    int rc = -1;
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
    return rc;
}

/* True if pid is blocked in accept() or accept4() (from /proc/PID/syscall:
 * the number of the system call a blocked task is in, or "running"). */
static int in_accept(pid_t pid) {
    char path[64], buf[64];
    snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    if (buf[0] < '0' || buf[0] > '9') /* "running" */
        return 0;
    long nr = strtol(buf, NULL, 10);
    return nr == SYS_accept || nr == SYS_accept4;
}

/* Forks and execs `busybox nc -ll -p PORT -e /bin/busybox cat` (a
 * persistent echo server: every connection gets its own `cat`) and waits
 * until it is listening, i.e. blocked in accept(). Returns the time from
 * before fork() until then in ns, or -1 (*pid is then 0 if nothing is left
 * to kill). */
static double spawn_listener(int port, pid_t *pid) {
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    double t0 = now_ns();
    *pid = fork();
    if (*pid < 0) {
        *pid = 0;
        return -1;
    }
    if (*pid == 0) {
        char *const argv[] = {"nc", "-ll", "-p", p, "-e", BUSYBOX, "cat", NULL};
        char *const envp[] = {NULL};
        execve(BUSYBOX, argv, envp);
        _exit(127);
    }
    for (;;) {
        if (in_accept(*pid))
            return now_ns() - t0;
        int status;
        if (waitpid(*pid, &status, WNOHANG) == *pid) {
            fprintf(stderr, "peer density: nc on port %d exited (status 0x%x) before listening\n",
                    port, status);
            *pid = 0;
            return -1;
        }
        if (now_ns() - t0 > LISTEN_TIMEOUT_NS) {
            fprintf(stderr, "peer density: nc on port %d not listening after %.0f s\n", port,
                    LISTEN_TIMEOUT_NS / 1e9);
            return -1;
        }
        sleep_ns(LISTEN_POLL_NS);
    }
}

/* One fork + execve(busybox true) + waitpid; its wall time in ns, or -1. */
static double fork_exec_true(void) {
    double t0 = now_ns();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        char *const argv[] = {"true", NULL};
        char *const envp[] = {NULL};
        execve(BUSYBOX, argv, envp);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    return now_ns() - t0;
}

/* How many TCP sockets listen on ports [lo, hi) per /proc/net/tcp and
 * /proc/net/tcp6 (busybox nc binds to the IPv6 wildcard, which also takes
 * IPv4); -1 if neither could be read. */
static int count_listening(int lo, int hi) {
    const char *files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    int n = 0, read_any = 0;
    for (int k = 0; k < 2; k++) {
        FILE *f = fopen(files[k], "r");
        if (!f)
            continue;
        read_any = 1;
        char line[512];
        if (!fgets(line, sizeof line, f)) { /* the header */
            fclose(f);
            continue;
        }
        while (fgets(line, sizeof line, f)) {
            unsigned port, state;
            if (sscanf(line, " %*d: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x", &port, &state) == 2 &&
                state == 0x0A && (int)port >= lo && (int)port < hi)
                n++;
        }
        fclose(f);
    }
    return read_any ? n : -1;
}

/* Rss, Pss and private (Private_Clean + Private_Dirty) bytes of pid from
 * /proc/PID/smaps_rollup. */
static int smaps_rollup(pid_t pid, long long *rss, long long *pss, long long *uss) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int found = 0;
    *rss = *pss = *uss = 0;
    while (fgets(line, sizeof line, f)) {
        long long kb;
        if (sscanf(line, "Rss: %lld", &kb) == 1)
            *rss = kb * 1024, found |= 1;
        else if (sscanf(line, "Pss: %lld", &kb) == 1)
            *pss = kb * 1024, found |= 2;
        else if (sscanf(line, "Private_Clean: %lld", &kb) == 1)
            *uss += kb * 1024, found |= 4;
        else if (sscanf(line, "Private_Dirty: %lld", &kb) == 1)
            *uss += kb * 1024, found |= 8;
    }
    fclose(f);
    return found == 15 ? 0 : -1;
}

/* Connects to 127.0.0.1:port, sends a line and reads it back; 0 if it came back. */
static int echo_once(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0)
        return -1;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char msg[64], back[64];
    int len = snprintf(msg, sizeof msg, "density echo %d\n", port);
    int got = 0;
    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0 && write(s, msg, len) == len) {
        while (got < len) {
            ssize_t n = read(s, back + got, len - got);
            if (n <= 0)
                break;
            got += n;
        }
    }
    close(s);
    return got == len && !memcmp(msg, back, len) ? 0 : -1;
}

/* The quantile q of v[0..n) (nearest rank; sorts v in place). */
static double quantile(double *v, int n, double q) {
    qsort(v, n, sizeof *v, cmp_double);
    int i = (int)(q * n + 0.999999) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static void print_us(const char *name, double *ns, int n) {
    if (n == 0) {
        printf("\"%s\":null", name);
        return;
    }
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += ns[i];
    double p99 = quantile(ns, n, 0.99);
    printf("\"%s\":{\"median\":%.1f,\"p99\":%.1f,\"min\":%.1f,\"max\":%.1f,\"mean\":%.1f}", name,
           median(ns, n) / 1e3, p99 / 1e3, ns[0] / 1e3, ns[n - 1] / 1e3, sum / n / 1e3);
}

static void density_failed(long n, const char *why) {
    fprintf(stderr, "peer density: %s\n", why);
    printf("{\"bench\":\"density\",\"processes\":%ld,\"error\":\"%s\"}\n", n, why);
    fflush(stdout);
}

static int bench_density(long n) {
    if (n > 65535 - DENSITY_PORT) {
        density_failed(n, "too many processes for the port range 20000..65535");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    if (loopback_up() != 0) {
        density_failed(n, "cannot bring lo up");
        return 1;
    }
    pid_t *pids = calloc(n, sizeof *pids);
    double *listen_ns = calloc(n, sizeof *listen_ns);
    long true_runs = n < DENSITY_TRUE_RUNS ? n : DENSITY_TRUE_RUNS;
    double *true_ns = calloc(true_runs, sizeof *true_ns);
    if (!pids || !listen_ns || !true_ns) {
        density_failed(n, "out of memory");
        return 1;
    }
    /* Touch them now so that they do not count as the listeners' memory. */
    memset(pids, 0, n * sizeof *pids);
    memset(listen_ns, 0, n * sizeof *listen_ns);

    /* The bare fork + exec + exit + waitpid of `busybox true`. */
    for (int i = 0; i < 3; i++)
        if (fork_exec_true() < 0) {
            density_failed(n, "fork+exec of busybox true failed");
            return 1;
        }
    for (long i = 0; i < true_runs; i++)
        if ((true_ns[i] = fork_exec_true()) < 0) {
            density_failed(n, "fork+exec of busybox true failed");
            return 1;
        }

    /* Memory before, as stable as we can make it. */
    int dropped = drop_caches() == 0;
    sleep_ns(1000000000L);
    struct meminfo before, after;
    if (read_meminfo(&before) != 0) {
        density_failed(n, "cannot read /proc/meminfo");
        return 1;
    }

    /* The listeners, one after the other, each until it listens. */
    long started = 0;
    double t_all = now_ns();
    for (long i = 0; i < n; i++) {
        double t = spawn_listener(DENSITY_PORT + (int)i, &pids[i]);
        if (t < 0)
            break;
        listen_ns[started++] = t;
    }
    t_all = now_ns() - t_all;

    /* Settle (while measuring the idle CPU), then memory after. */
    unsigned long long busy0 = 0, total0 = 0, busy1 = 0, total1 = 0;
    int cpu_ok = cpu_jiffies(&busy0, &total0) == 0;
    sleep_ns(2000000000L);
    cpu_ok = cpu_ok && cpu_jiffies(&busy1, &total1) == 0 && total1 > total0;
    if (dropped)
        drop_caches();
    sleep_ns(1000000000L);
    if (read_meminfo(&after) != 0) {
        density_failed(n, "cannot read /proc/meminfo");
        return 1;
    }
    int listening = count_listening(DENSITY_PORT, DENSITY_PORT + (int)n);

    /* PSS and RSS of up to 20 of them, evenly spread. */
    long long rss_sum = 0, pss_sum = 0, uss_sum = 0;
    int sampled = 0;
    int want = started < 20 ? (int)started : 20;
    for (int k = 0; k < want; k++) {
        long i = (long)k * started / want;
        long long rss, pss, uss;
        if (pids[i] && smaps_rollup(pids[i], &rss, &pss, &uss) == 0) {
            rss_sum += rss, pss_sum += pss, uss_sum += uss;
            sampled++;
        }
    }

    /* An echo through 10 of them (distinct, pseudo-random but repeatable). */
    int tried = 0, answered = 0;
    int sample = started < 10 ? (int)started : 10;
    long chosen[10];
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    while (tried < sample) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        long i = (long)((seed >> 33) % (uint64_t)started);
        int dup = 0;
        for (int k = 0; k < tried; k++)
            dup |= chosen[k] == i;
        if (dup)
            continue;
        chosen[tried++] = i;
        if (echo_once(DENSITY_PORT + (int)i) == 0)
            answered++;
        else
            fprintf(stderr, "peer density: no echo from port %d\n", DENSITY_PORT + (int)i);
    }

    long long used = before.available - after.available;
    printf("{\"bench\":\"density\",\"processes\":%ld,\"started\":%ld,\"listening\":%d,"
           "\"what\":\"busybox nc -ll -p PORT -e /bin/busybox cat\","
           "\"dropped_caches\":%s,\"mem_available_before\":%lld,\"mem_available_after\":%lld,"
           "\"mem_free_before\":%lld,\"mem_free_after\":%lld,\"bytes_per_process\":%lld,"
           "\"free_bytes_per_process\":%lld,",
           n, started, listening, dropped ? "true" : "false", before.available, after.available,
           before.free, after.free, started ? used / started : 0,
           started ? (before.free - after.free) / started : 0);
    printf("\"delta_bytes_per_process\":{\"anon\":%lld,\"page_tables\":%lld,\"kernel_stack\":%lld,"
           "\"slab\":%lld,\"shmem\":%lld},",
           started ? (after.anon - before.anon) / started : 0,
           started ? (after.page_tables - before.page_tables) / started : 0,
           started ? (after.kernel_stack - before.kernel_stack) / started : 0,
           started ? (after.slab - before.slab) / started : 0,
           started ? (after.shmem - before.shmem) / started : 0);
    if (sampled)
        printf("\"smaps_sampled\":%d,\"pss_bytes\":%lld,\"rss_bytes\":%lld,\"uss_bytes\":%lld,",
               sampled, pss_sum / sampled, rss_sum / sampled, uss_sum / sampled);
    else
        printf("\"smaps_sampled\":0,\"pss_bytes\":null,\"rss_bytes\":null,\"uss_bytes\":null,");
    printf("\"total_spawn_ms\":%.1f,", t_all / 1e6);
    print_us("spawn_listen_us", listen_ns, (int)started);
    printf(",\"fork_exec_runs\":%ld,", true_runs);
    print_us("fork_exec_us", true_ns, (int)true_runs);
    if (cpu_ok)
        printf(",\"idle_busy_cpu_percent\":%.2f",
               100.0 * (double)(busy1 - busy0) / (double)(total1 - total0));
    else
        printf(",\"idle_busy_cpu_percent\":null");
    printf(",\"echo_sample\":{\"tried\":%d,\"answered\":%d}}\n", tried, answered);
    fflush(stdout);

    /* Stop them all. */
    for (long i = 0; i < n; i++)
        if (pids[i] > 0)
            kill(pids[i], SIGTERM);
    for (long i = 0; i < n; i++)
        if (pids[i] > 0)
            waitpid(pids[i], NULL, 0);
    if (started < n || listening != n || answered != tried) {
        fprintf(stderr, "peer density: %ld of %ld started, %d listening, %d of %d echoed\n",
                started, n, listening, answered, tried);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "spinning") && argc > 3)
        return spinning(number(argv[2], "K"), argc - 2, argv + 2, main);
    if (!strcmp(cmd, "spin"))
        return spin();
    if (!strcmp(cmd, "sleep-lateness"))
        return sleep_lateness(number(argc > 2 ? argv[2] : NULL, "N"), number(argc > 3 ? argv[3] : NULL, "PERIOD_US"));
    if (!strcmp(cmd, "echo-pair") && argc > 2)
        return echo_pair((int)number(argv[2], "PORT"), argc - 3, argv + 3);
    if (!strcmp(cmd, "exit"))
        _exit(0);
    if (!strcmp(cmd, "getppid") || !strcmp(cmd, "poll-ready") || !strcmp(cmd, "clock")) {
        long n = number(argc > 2 ? argv[2] : NULL, "N");
        int rounds = (int)number(argc > 3 ? argv[3] : NULL, "ROUNDS");
        if (!strcmp(cmd, "getppid"))
            return time_calls("getppid", call_getppid, n, rounds);
        if (!strcmp(cmd, "clock"))
            return time_calls("clock_gettime", call_clock, n, rounds);
        uint64_t one = 1;
        ready_fd = eventfd(0, 0);
        if (ready_fd < 0 || write(ready_fd, &one, sizeof one) != sizeof one) {
            perror("peer: eventfd");
            return 1;
        }
        return time_calls("poll_ready", call_poll_ready, n, rounds);
    }
    if (!strcmp(cmd, "spawn"))
        return bench_spawn("/bin/peer", number(argc > 2 ? argv[2] : NULL, "K"));
    if (!strcmp(cmd, "density"))
        return bench_density(number(argc > 2 ? argv[2] : NULL, "N"));
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
    if (!strcmp(cmd, "bulk-sink"))
        return bulk_sink((int)number(argc > 2 ? argv[2] : NULL, "PORT"));
    if (!strcmp(cmd, "bulk-send"))
        return bulk_send(argc - 2, argv + 2);
    fprintf(stderr, "usage: peer getppid N ROUNDS | spawn K | exit | density N | debug-exit CODE | echo-server PORT |\n"
                    "       echo-client IP PORT CONNECTIONS MESSAGE_BYTES DURATION_MS|COUNTx |\n"
                    "       http-load IP PORT PATH CONNECTIONS DURATION_MS|COUNTx |\n"
                    "       bulk-sink PORT | bulk-send IP PORT CONNECTIONS TOTAL_BYTES [CHUNK_BYTES] |\n"
                    "       sleep-lateness N PERIOD_US | spin | spinning K CMD... | echo-pair PORT ECHO-CLIENT-ARGS...\n");
    return 2;
}
