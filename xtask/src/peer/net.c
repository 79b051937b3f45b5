/*
 * The Linux peer's network workloads for `cargo xtask bench net`, the same
 * as our guests apps/echo, apps/echo-bench and apps/http-load (see their
 * doc comments), linked into /bin/peer with peer.c:
 *
 *   peer echo-server PORT
 *       TCP echo on PORT: one thread, epoll, non-blocking sockets,
 *       TCP_NODELAY; runs until killed.
 *   peer echo-client IP PORT CONNECTIONS[,...] MESSAGE_BYTES DURATION_MS|COUNTx [WARMUP_MS]
 *       like apps/echo-bench: connections in lockstep round trips (write a
 *       message, read all of its echo, check it, again), all driven by one
 *       thread with epoll, as our guest drives them with one executor;
 *       prints {"bench":"echo",...} per setting.
 *   peer http-load IP PORT PATH CONNECTIONS[,...] DURATION_MS|COUNTx [WARMUP_MS]
 *       like apps/http-load: keep-alive GET requests back to back, parsing
 *       status and Content-Length; prints {"bench":"http",...} per setting.
 *   peer bulk-sink PORT
 *       like `echo sink`: reads each connection to its end into a 256 KiB
 *       buffer, counting bytes, answers the count (8 bytes, little-endian)
 *       and closes; one thread, epoll; runs until killed.
 *   peer bulk-send IP PORT CONNECTIONS[,...] TOTAL_BYTES [CHUNK_BYTES]
 *       like `echo-bench bulk`: TOTAL_BYTES split over the connections,
 *       written in CHUNK_BYTES (256 KiB), each finished and its count
 *       checked; prints {"bench":"bulk",...} per setting.
 *   With WARMUP_MS, the connections first run that long unmeasured.
 *
 * Latencies are read with rdtsc (converted with a rate calibrated against
 * CLOCK_MONOTONIC), not clock_gettime, so the clock source the kernel
 * picked under TCG does not add to them; the run's duration is
 * CLOCK_MONOTONIC. The histogram is the guests' (libs/loadgen/src/hist.rs):
 * log-linear, 32 buckets per power of two.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include "net.h"

/* ---- time ---- */

static double mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double ns_per_cycle = 1.0;

/* The TSC in ns (for deadlines: cheaper than clock_gettime if the kernel
   picked an emulated clock source). */
static double tsc_ns(void) {
    return (double)__rdtsc() * ns_per_cycle;
}

/* Measures the TSC against CLOCK_MONOTONIC for 100 ms. */
static void calibrate(void) {
    double t0 = mono_ns();
    uint64_t c0 = __rdtsc();
    struct timespec d = {0, 100 * 1000 * 1000};
    nanosleep(&d, NULL);
    double t1 = mono_ns();
    uint64_t c1 = __rdtsc();
    if (c1 > c0)
        ns_per_cycle = (t1 - t0) / (double)(c1 - c0);
    signal(SIGPIPE, SIG_IGN);
}

/* ---- histogram (libs/loadgen/src/hist.rs) ---- */

#define SUB_BITS 5
#define SUB (1 << SUB_BITS)
#define BUCKETS ((64 - SUB_BITS + 1) * SUB)

struct hist {
    uint64_t counts[BUCKETS];
    uint64_t count, max;
    double sum;
};

static int hist_index(uint64_t v) {
    if (v < SUB)
        return (int)v;
    int e = 63 - __builtin_clzll(v);
    int sub = (int)(v >> (e - SUB_BITS)) & (SUB - 1);
    return (e - SUB_BITS + 1) * SUB + sub;
}

static void hist_record(struct hist *h, uint64_t ns) {
    h->counts[hist_index(ns)]++;
    h->count++;
    h->sum += (double)ns;
    if (ns > h->max)
        h->max = ns;
}

static uint64_t hist_quantile(const struct hist *h, double q) {
    if (!h->count)
        return 0;
    double x = q * (double)h->count;
    uint64_t rank = (uint64_t)x;
    if ((double)rank < x)
        rank++;
    if (rank < 1)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    uint64_t seen = 0;
    for (int i = 0; i < BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t low, width;
            if (i < 2 * SUB) {
                low = (uint64_t)i;
                width = 1;
            } else {
                int g = i / SUB;
                low = (uint64_t)(SUB + i % SUB) << (g - 1);
                width = (uint64_t)1 << (g - 1);
            }
            uint64_t v = low + width / 2;
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

static void hist_print_us(const struct hist *h) {
    printf("{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"max\":%.1f,\"mean\":%.1f}",
           hist_quantile(h, 0.5) / 1e3, hist_quantile(h, 0.9) / 1e3, hist_quantile(h, 0.99) / 1e3,
           h->max / 1e3, h->count ? h->sum / (double)h->count / 1e3 : 0.0);
}

/* ---- sockets ---- */

static void nonblocking_nodelay(int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* A blocking connect, retried while refused for up to `patience_ms`; -1 on failure. */
static int connect_to(const char *ip, int port, int patience_ms) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1)
        return -1;
    double give_up = mono_ns() + patience_ms * 1e6;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            return -1;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
            nonblocking_nodelay(fd);
            return fd;
        }
        close(fd);
        if (mono_ns() >= give_up)
            return -1;
        struct timespec d = {0, 100 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
}

/* DURATION_MS or COUNTx. */
static int parse_length(const char *s, long *ms, long *count) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || v <= 0)
        return -1;
    *ms = *count = 0;
    if (!strcmp(end, "x"))
        *count = v;
    else if (!*end)
        *ms = v;
    else
        return -1;
    return 0;
}

/* ---- echo server ---- */

struct echo_conn {
    int fd;
    size_t off, len; /* bytes of buf still to write back */
    char buf[65536];
};

int echo_server(int port) {
    signal(SIGPIPE, SIG_IGN);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1024)) {
        perror("peer echo-server: bind/listen");
        return 1;
    }
    fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            struct echo_conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct echo_conn *nc = malloc(sizeof *nc);
                    nc->fd = fd;
                    nc->off = nc->len = 0;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            int dead = 0;
            if (c->len == 0) {
                ssize_t r = read(c->fd, c->buf, sizeof c->buf);
                if (r > 0) {
                    c->off = 0;
                    c->len = (size_t)r;
                } else if (r == 0 || errno != EAGAIN) {
                    dead = 1;
                }
            }
            while (!dead && c->len > 0) {
                ssize_t w = write(c->fd, c->buf + c->off, c->len);
                if (w > 0) {
                    c->off += (size_t)w;
                    c->len -= (size_t)w;
                } else if (w < 0 && errno == EAGAIN) {
                    break;
                } else {
                    dead = 1;
                }
            }
            if (dead) {
                close(c->fd); /* also leaves the epoll set */
                free(c);
                continue;
            }
            /* Wait for room to write what is left, else for more to read. */
            struct epoll_event e = {.events = c->len ? EPOLLOUT : EPOLLIN, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
        }
    }
}

/* ---- echo client ---- */

struct client_conn {
    int fd, id, active; /* fd -1: closed after an error */
    uint64_t round;
    size_t sent, got;
    uint64_t t0;
    unsigned char *msg, *back;
};

static void fill_round(struct client_conn *c, size_t len) {
    for (size_t i = 0; i < 8 && i < len; i++)
        c->msg[i] = (unsigned char)(c->round >> (8 * i));
}

/* Writes what is left of the message; returns -1 on error. */
static int echo_send(struct client_conn *c, size_t len) {
    while (c->sent < len) {
        ssize_t w = write(c->fd, c->msg + c->sent, len - c->sent);
        if (w > 0)
            c->sent += (size_t)w;
        else if (w < 0 && errno == EAGAIN)
            return 0;
        else
            return -1;
    }
    return 0;
}

static void drop_conn(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* Runs round trips on every open connection for `ms` (or `count` round
   trips each), recording latencies into `h`; returns the errors and sets
   *secs to the phase's length (CLOCK_MONOTONIC). */
static long echo_phase(struct client_conn *cs, int conns, size_t len, long ms, long count, struct hist *h,
                       double *secs) {
    long errors = 0;
    int ep = epoll_create1(0);
    double start = mono_ns(), start_tsc = tsc_ns();
    double deadline = start_tsc + (double)ms * 1e6;
    double hard = (ms ? deadline : start_tsc + 600e9) + 10e9;
    int running = 0;
    for (int i = 0; i < conns; i++) {
        struct client_conn *c = &cs[i];
        if (c->fd < 0)
            continue;
        c->active = 1;
        c->round = 0;
        c->sent = c->got = 0;
        running++;
        fill_round(c, len);
        c->t0 = __rdtsc();
        struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
    }
    double last_end = start;
    struct epoll_event evs[64];
    while (running > 0 && tsc_ns() < hard) {
        int n = epoll_wait(ep, evs, 64, 1000);
        for (int i = 0; i < n; i++) {
            struct client_conn *c = evs[i].data.ptr;
            if (!c->active)
                continue;
            int fail = 0, finished = 0;
            if (c->sent < len && echo_send(c, len) < 0)
                fail = 1;
            while (!fail && c->got < len) {
                ssize_t r = read(c->fd, c->back + c->got, len - c->got);
                if (r > 0)
                    c->got += (size_t)r;
                else if (r < 0 && errno == EAGAIN)
                    break;
                else
                    fail = 1;
            }
            if (!fail && c->got == len) {
                uint64_t cycles = __rdtsc() - c->t0;
                if (memcmp(c->back, c->msg, len)) {
                    fail = 1;
                } else {
                    hist_record(h, (uint64_t)((double)cycles * ns_per_cycle));
                    c->round++;
                    c->sent = c->got = 0;
                    if ((count && c->round >= (uint64_t)count) || (!count && tsc_ns() >= deadline)) {
                        finished = 1;
                    } else {
                        fill_round(c, len);
                        c->t0 = __rdtsc();
                        if (echo_send(c, len) < 0)
                            fail = 1;
                    }
                }
            }
            if (fail || finished) {
                errors += fail;
                if (fail)
                    drop_conn(&c->fd);
                c->active = 0;
                running--;
                last_end = mono_ns();
            } else {
                /* Only wait for room to write while the message is not all out. */
                struct epoll_event e = {.events = EPOLLIN | (c->sent < len ? EPOLLOUT : 0), .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
            }
        }
    }
    double end = running > 0 ? mono_ns() : last_end;
    for (int i = 0; i < conns; i++)
        if (cs[i].active) { /* stuck */
            errors++;
            cs[i].active = 0;
            drop_conn(&cs[i].fd);
        }
    close(ep);
    *secs = (end - start) / 1e9;
    return errors;
}

static void echo_run(const char *ip, int port, int conns, size_t len, long ms, long count, long warmup_ms) {
    struct client_conn *cs = calloc((size_t)conns, sizeof *cs);
    struct hist *h = calloc(1, sizeof *h);
    long errors = 0;
    for (int i = 0; i < conns; i++) {
        cs[i].id = i;
        cs[i].fd = connect_to(ip, port, 10000);
        if (cs[i].fd < 0)
            errors++;
        cs[i].msg = malloc(len);
        cs[i].back = malloc(len);
        for (size_t j = 0; j < len; j++)
            cs[i].msg[j] = (unsigned char)(j * 7 + (size_t)i * 13);
    }
    double secs;
    if (warmup_ms > 0) {
        struct hist *warm = calloc(1, sizeof *warm);
        errors += echo_phase(cs, conns, len, warmup_ms, 0, warm, &secs);
        free(warm);
    }
    errors += echo_phase(cs, conns, len, ms, count, h, &secs);
    printf("{\"bench\":\"echo\",\"connections\":%d,\"message_bytes\":%zu,\"duration_ms\":%.1f,"
           "\"round_trips\":%llu,\"round_trips_per_sec\":%.1f,\"bytes_per_sec\":%.1f,\"latency_us\":",
           conns, len, secs * 1e3, (unsigned long long)h->count, secs > 0 ? h->count / secs : 0.0,
           secs > 0 ? (double)h->count * (double)len / secs : 0.0);
    hist_print_us(h);
    printf(",\"errors\":%ld}\n", errors);
    fflush(stdout);
    for (int i = 0; i < conns; i++) {
        drop_conn(&cs[i].fd);
        free(cs[i].msg);
        free(cs[i].back);
    }
    free(cs);
    free(h);
}

int echo_client(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: peer echo-client IP PORT CONNECTIONS[,...] MESSAGE_BYTES DURATION_MS|COUNTx [WARMUP_MS]\n");
        return 2;
    }
    long ms, count;
    int port = atoi(argv[1]);
    long len = atol(argv[3]);
    long warmup = argc == 6 ? atol(argv[5]) : 0;
    if (port <= 0 || len <= 0 || warmup < 0 || parse_length(argv[4], &ms, &count)) {
        fprintf(stderr, "peer echo-client: bad arguments\n");
        return 2;
    }
    calibrate();
    char *list = strdup(argv[2]), *save = NULL;
    for (char *c = strtok_r(list, ",", &save); c; c = strtok_r(NULL, ",", &save)) {
        int conns = atoi(c);
        if (conns <= 0)
            return 2;
        echo_run(argv[0], port, conns, (size_t)len, ms, count, warmup);
    }
    return 0;
}

/* ---- HTTP load ---- */

#define HEAD_MAX (16 * 1024)

struct http_conn {
    int fd, done;
    size_t sent, have, body_left;
    int in_body, status, close_after;
    size_t response_bytes;
    uint64_t t0, requests;
    char buf[HEAD_MAX];
};

struct status_count {
    int status;
    long n;
};

/* Parses a response head (without its blank line); 0 on success. */
static int parse_head(char *head, size_t len, int *status, size_t *content_length, int *close_after) {
    head[len] = 0;
    if (strncmp(head, "HTTP/1.", 7) || len < 12 || head[8] != ' ')
        return -1;
    *status = atoi(head + 9);
    if (*status < 100 || *status > 999)
        return -1;
    *close_after = head[7] == '0';
    long cl = -1;
    for (char *line = strstr(head, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        char *colon = strchr(line, ':');
        if (!colon)
            return -1;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t name = (size_t)(colon - line);
        if (name == 14 && !strncasecmp(line, "content-length", 14))
            cl = atol(v);
        else if (name == 10 && !strncasecmp(line, "connection", 10))
            *close_after = !strncasecmp(v, "close", 5);
        else if (name == 17 && !strncasecmp(line, "transfer-encoding", 17))
            return -1;
    }
    if (*status < 200 || *status == 204 || *status == 304)
        cl = 0;
    if (cl < 0)
        return -1;
    *content_length = (size_t)cl;
    return 0;
}

static int http_send(struct http_conn *c, const char *req, size_t len) {
    while (c->sent < len) {
        ssize_t w = write(c->fd, req + c->sent, len - c->sent);
        if (w > 0)
            c->sent += (size_t)w;
        else if (w < 0 && errno == EAGAIN)
            return 0;
        else
            return -1;
    }
    return 0;
}

/* Reads what is there; returns 1 when a whole response is in, 0 if more is
   needed, -1 on error. Bytes after the response are kept. */
static int http_receive(struct http_conn *c) {
    for (;;) {
        if (c->in_body) {
            if (c->body_left == 0)
                return 1;
            char sink[65536];
            size_t want = c->body_left < sizeof sink ? c->body_left : sizeof sink;
            ssize_t r = read(c->fd, sink, want);
            if (r > 0) {
                c->body_left -= (size_t)r;
                continue;
            }
            return r < 0 && errno == EAGAIN ? 0 : -1;
        }
        char *end = c->have >= 4 ? memmem(c->buf, c->have, "\r\n\r\n", 4) : NULL;
        if (end) {
            size_t head_len = (size_t)(end - c->buf) + 4;
            size_t cl;
            char saved = *end;
            if (parse_head(c->buf, (size_t)(end - c->buf), &c->status, &cl, &c->close_after))
                return -1;
            *end = saved;
            c->response_bytes = head_len + cl;
            size_t buffered = c->have - head_len < cl ? c->have - head_len : cl;
            memmove(c->buf, c->buf + head_len + buffered, c->have - head_len - buffered);
            c->have -= head_len + buffered;
            c->body_left = cl - buffered;
            c->in_body = 1;
            continue;
        }
        if (c->have >= HEAD_MAX - 1)
            return -1;
        ssize_t r = read(c->fd, c->buf + c->have, HEAD_MAX - 1 - c->have);
        if (r > 0) {
            c->have += (size_t)r;
            continue;
        }
        return r < 0 && errno == EAGAIN ? 0 : -1;
    }
}

struct http_stats {
    struct hist h;
    struct status_count st[16];
    long errors, reconnects;
    double bytes;
};

/* Runs requests on every open connection for `ms` (or `count` requests
   each) into `t`; sets *secs to the phase's length. */
static void http_phase(struct http_conn *cs, int conns, const char *ip, int port, const char *req, size_t rlen,
                       long ms, long count, struct http_stats *t, double *secs) {
    int ep = epoll_create1(0);
    double start = mono_ns(), start_tsc = tsc_ns();
    double deadline = start_tsc + (double)ms * 1e6;
    double hard = (ms ? deadline : start_tsc + 600e9) + 10e9;
    int running = 0;
    for (int i = 0; i < conns; i++) {
        struct http_conn *c = &cs[i];
        if (c->fd < 0)
            continue;
        c->done = 0;
        c->requests = 0;
        c->sent = c->have = 0;
        c->in_body = 0;
        running++;
        c->t0 = __rdtsc();
        struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
    }
    double last_end = start;
    struct epoll_event evs[64];
    while (running > 0 && tsc_ns() < hard) {
        int n = epoll_wait(ep, evs, 64, 1000);
        for (int i = 0; i < n; i++) {
            struct http_conn *c = evs[i].data.ptr;
            if (c->done)
                continue;
            int r = http_send(c, req, rlen) < 0 ? -1 : c->sent == rlen ? http_receive(c) : 0;
            int reconnect = 0, finished = 0;
            if (r == 1) {
                hist_record(&t->h, (uint64_t)((double)(__rdtsc() - c->t0) * ns_per_cycle));
                t->bytes += (double)c->response_bytes;
                int k = 0;
                while (k < 15 && t->st[k].status && t->st[k].status != c->status)
                    k++;
                t->st[k].status = c->status;
                t->st[k].n++;
                c->requests++;
                t->reconnects += c->close_after;
                reconnect = c->close_after;
            } else if (r < 0) {
                t->errors++;
                reconnect = 1;
            }
            if (r != 0) {
                c->sent = 0;
                c->in_body = 0;
                if ((count && c->requests >= (uint64_t)count) || (!count && tsc_ns() >= deadline))
                    finished = 1;
            }
            if (reconnect) {
                drop_conn(&c->fd);
                c->have = 0;
                c->fd = connect_to(ip, port, 1000);
                if (c->fd < 0) {
                    t->errors++;
                    finished = 1;
                } else {
                    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
                }
            }
            if (finished) {
                c->done = 1;
                running--;
                last_end = mono_ns();
                continue;
            }
            if (r != 0) {
                c->t0 = __rdtsc();
                if (http_send(c, req, rlen) < 0)
                    continue; /* seen as an error on the next event */
            }
            struct epoll_event e = {.events = EPOLLIN | (c->sent < rlen ? EPOLLOUT : 0), .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
        }
    }
    double end = running > 0 ? mono_ns() : last_end;
    for (int i = 0; i < conns; i++)
        if (cs[i].fd >= 0 && !cs[i].done) { /* stuck */
            t->errors++;
            cs[i].done = 1;
            drop_conn(&cs[i].fd);
        }
    close(ep);
    *secs = (end - start) / 1e9;
}

static void http_run(const char *ip, int port, const char *path, int conns, long ms, long count, long warmup_ms) {
    char req[2048];
    size_t rlen = (size_t)snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: http-load\r\n\r\n",
                                   path, ip, port);
    struct http_conn *cs = calloc((size_t)conns, sizeof *cs);
    struct http_stats *t = calloc(1, sizeof *t);
    long connect_errors = 0;
    for (int i = 0; i < conns; i++) {
        cs[i].fd = connect_to(ip, port, 10000);
        connect_errors += cs[i].fd < 0;
    }
    double secs;
    if (warmup_ms > 0) {
        struct http_stats *warm = calloc(1, sizeof *warm);
        http_phase(cs, conns, ip, port, req, rlen, warmup_ms, 0, warm, &secs);
        connect_errors += warm->errors;
        free(warm);
    }
    http_phase(cs, conns, ip, port, req, rlen, ms, count, t, &secs);
    printf("{\"bench\":\"http\",\"connections\":%d,\"path\":\"%s\",\"duration_ms\":%.1f,\"requests\":%llu,"
           "\"requests_per_sec\":%.1f,\"bytes_per_sec\":%.1f,\"latency_us\":",
           conns, path, secs * 1e3, (unsigned long long)t->h.count, secs > 0 ? t->h.count / secs : 0.0,
           secs > 0 ? t->bytes / secs : 0.0);
    hist_print_us(&t->h);
    printf(",\"status\":{");
    for (int k = 0; k < 16 && t->st[k].status; k++)
        printf("%s\"%d\":%ld", k ? "," : "", t->st[k].status, t->st[k].n);
    printf("},\"errors\":%ld,\"reconnects\":%ld}\n", connect_errors + t->errors, t->reconnects);
    fflush(stdout);
    for (int i = 0; i < conns; i++)
        drop_conn(&cs[i].fd);
    free(cs);
    free(t);
}

int http_load(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: peer http-load IP PORT PATH CONNECTIONS[,...] DURATION_MS|COUNTx [WARMUP_MS]\n");
        return 2;
    }
    long ms, count;
    int port = atoi(argv[1]);
    const char *path = argv[2];
    long warmup = argc == 6 ? atol(argv[5]) : 0;
    if (port <= 0 || path[0] != '/' || strlen(path) > 1000 || strpbrk(path, "\" \\\r\n") || warmup < 0 ||
        parse_length(argv[4], &ms, &count)) {
        fprintf(stderr, "peer http-load: bad arguments\n");
        return 2;
    }
    calibrate();
    char *list = strdup(argv[3]), *save = NULL;
    for (char *c = strtok_r(list, ",", &save); c; c = strtok_r(NULL, ",", &save)) {
        int conns = atoi(c);
        if (conns <= 0)
            return 2;
        http_run(argv[0], port, path, conns, ms, count, warmup);
    }
    return 0;
}

/* ---- bulk: one-way streams (apps/echo-bench bulk -> apps/echo sink) ---- */

#define BULK_BUFFER (256 * 1024)

struct bulk_conn {
    int fd;
    uint64_t bytes; /* sink: read so far; sender: left to write */
    int state;      /* sender: 0 writing, 1 waiting for the count, 2 done */
    unsigned char count[8];
    int got;
};

/* Reads each connection to its end into one 256 KiB buffer, counting the
   bytes, then answers the count (8 bytes, little-endian) and closes. One
   thread, epoll; runs until killed. */
int bulk_sink(int port) {
    signal(SIGPIPE, SIG_IGN);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1024)) {
        perror("peer bulk-sink: bind/listen");
        return 1;
    }
    fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    static unsigned char buf[BULK_BUFFER];
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            struct bulk_conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct bulk_conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            for (;;) {
                ssize_t r = read(c->fd, buf, sizeof buf);
                if (r > 0) {
                    c->bytes += (uint64_t)r;
                    continue;
                }
                if (r < 0 && errno == EAGAIN)
                    break;
                if (r == 0) {
                    unsigned char count[8];
                    for (int b = 0; b < 8; b++)
                        count[b] = (unsigned char)(c->bytes >> (8 * b));
                    /* An empty send buffer takes 8 bytes at once. */
                    if (write(c->fd, count, sizeof count) != sizeof count)
                        fprintf(stderr, "peer bulk-sink: could not answer the count\n");
                }
                close(c->fd);
                free(c);
                break;
            }
        }
    }
}

/* CONNECTIONS connections streaming TOTAL bytes (TOTAL / CONNECTIONS
   each) in writes of CHUNK, each then finished (SHUT_WR) and answered by
   the sink's count; one thread, epoll. The clock runs from when every
   connection is made until the last count is back. */
static void bulk_run(const char *ip, int port, int conns, uint64_t total, size_t chunk) {
    struct bulk_conn *cs = calloc((size_t)conns, sizeof *cs);
    unsigned char *buf = malloc(chunk);
    for (size_t i = 0; i < chunk; i++)
        buf[i] = (unsigned char)(i * 7);
    uint64_t each = total / (uint64_t)conns;
    long errors;
    int ep = epoll_create1(0), running = 0;
    for (int i = 0; i < conns; i++) {
        cs[i].fd = connect_to(ip, port, 10000);
        cs[i].bytes = each;
        if (cs[i].fd < 0)
            continue;
        struct epoll_event e = {.events = EPOLLOUT, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &e);
        running++;
    }
    int ok = 0;
    double start = mono_ns();
    struct epoll_event evs[64];
    while (running > 0) {
        int n = epoll_wait(ep, evs, 64, 20000);
        if (n <= 0)
            break; /* stuck for 20 s */
        for (int i = 0; i < n; i++) {
            struct bulk_conn *c = evs[i].data.ptr;
            while (c->state == 0 && c->bytes > 0) {
                size_t want = c->bytes < chunk ? (size_t)c->bytes : chunk;
                ssize_t w = write(c->fd, buf, want);
                if (w > 0)
                    c->bytes -= (uint64_t)w;
                else if (w < 0 && errno == EAGAIN)
                    break;
                else
                    c->state = 2;
            }
            if (c->state == 0 && c->bytes == 0) {
                shutdown(c->fd, SHUT_WR);
                c->state = 1;
                struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
            }
            while (c->state == 1) {
                ssize_t r = read(c->fd, c->count + c->got, sizeof c->count - (size_t)c->got);
                if (r > 0) {
                    c->got += (int)r;
                    if (c->got == sizeof c->count) {
                        uint64_t v = 0;
                        for (int b = 0; b < 8; b++)
                            v |= (uint64_t)c->count[b] << (8 * b);
                        c->state = 2;
                        ok += v == each;
                    }
                } else if (r < 0 && errno == EAGAIN) {
                    break;
                } else {
                    c->state = 2;
                }
            }
            if (c->state == 2 && c->fd >= 0) {
                running--;
                drop_conn(&c->fd);
            }
        }
    }
    double secs = (mono_ns() - start) / 1e9;
    errors = conns - ok; /* not made, failed, wrong count or stuck */
    uint64_t bytes = each * (uint64_t)ok;
    double per_sec = secs > 0 ? (double)bytes / secs : 0;
    printf("{\"bench\":\"bulk\",\"connections\":%d,\"bytes\":%llu,\"bytes_per_connection\":%llu,\"chunk_bytes\":%zu,"
           "\"duration_ms\":%.1f,\"mbytes_per_sec\":%.2f,\"gbits_per_sec\":%.4f,\"errors\":%ld}\n",
           conns, (unsigned long long)bytes, (unsigned long long)each, chunk, secs * 1e3, per_sec / 1e6,
           per_sec * 8 / 1e9, errors);
    fflush(stdout);
    for (int i = 0; i < conns; i++)
        drop_conn(&cs[i].fd);
    free(cs);
    free(buf);
}

int bulk_send(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: peer bulk-send IP PORT CONNECTIONS[,...] TOTAL_BYTES [CHUNK_BYTES]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    long long total = atoll(argv[3]);
    long long chunk = argc == 5 ? atoll(argv[4]) : BULK_BUFFER;
    if (port <= 0 || total <= 0 || chunk <= 0) {
        fprintf(stderr, "peer bulk-send: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    char *list = strdup(argv[2]), *save = NULL;
    for (char *c = strtok_r(list, ",", &save); c; c = strtok_r(NULL, ",", &save)) {
        int conns = atoi(c);
        if (conns <= 0)
            return 2;
        bulk_run(argv[0], port, conns, (uint64_t)total, (size_t)chunk);
    }
    free(list);
    return 0;
}
