/* ldapload: a closed-loop LDAP load generator (epoll, one thread) for bench/bench_ldap.py.
 *
 * Each connection sends one pre-encoded request, waits for its final response, and
 * sends the next, so the figure is the server's rate, not the client's. Requests are
 * read pre-encoded from files so this program knows nothing of BER beyond framing.
 * SEARCH_FILE may hold several searches back to back: they are sent in turn (all
 * connections share one cursor), e.g. one per address to defeat caches.
 *
 * usage: ldapload HOST PORT CONNS SECONDS WARMUP MODE SEARCH_FILE [BIND_FILE]
 *   MODE persist: CONNS persistent connections repeating SEARCH_FILE
 *   MODE session: per connection connect, bind (BIND_FILE), search, unbind, close; repeat
 * prints one JSON line: completed, errors, seconds, rate, p50_us, p99_us
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024
#define BUF 262144
#define HIST_US 2000000 /* latency histogram: 1 us buckets up to 2 s */

static const uint8_t UNBIND[] = {0x30, 0x05, 0x02, 0x01, 0x7f, 0x42, 0x00};

typedef struct {
    int fd;
    int state; /* 0 connecting, 1 bind sent, 2 search sent */
    long generation; /* bumped on reconnect: buffered bytes belong to the old socket */
    size_t have;
    double started;
    uint8_t buf[BUF];
} conn_t;

static uint8_t *search_file, *bind_req;
static size_t search_file_len, bind_len;
static size_t *req_off, *req_len, nreqs, next_req;
static int session_mode;
static struct sockaddr_in addr;
static int ep;
static uint32_t *hist;
static long completed, errors;
static double measure_from, measure_to;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint8_t *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc((size_t)size + 1);
    *len = fread(data, 1, (size_t)size, f);
    fclose(f);
    return data;
}

/* Split the search file into its LDAPMessages (definite lengths only). */
static void split_requests(void) {
    size_t cap = 16;
    req_off = malloc(cap * sizeof *req_off);
    req_len = malloc(cap * sizeof *req_len);
    for (size_t p = 0; p + 2 <= search_file_len;) {
        size_t hl = 2, body = search_file[p + 1];
        if (body & 0x80) {
            size_t k = body & 0x7f;
            body = 0;
            for (size_t i = 0; i < k; i++) body = body << 8 | search_file[p + 2 + i];
            hl += k;
        }
        if (nreqs == cap) {
            cap *= 2;
            req_off = realloc(req_off, cap * sizeof *req_off);
            req_len = realloc(req_len, cap * sizeof *req_len);
        }
        req_off[nreqs] = p;
        req_len[nreqs++] = hl + body;
        p += hl + body;
    }
    if (nreqs == 0) { fprintf(stderr, "no request in the search file\n"); exit(2); }
}

static void send_search(conn_t *c);

static void send_all(conn_t *c, const uint8_t *data, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(c->fd, data + off, len - off);
        if (n < 0) {
            if (errno == EAGAIN) continue; /* tiny requests: spin rather than buffer */
            errors++;
            return;
        }
        off += (size_t)n;
    }
}

static void open_conn(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->have = 0;
    c->state = 0;
    c->generation++;
    c->started = now();
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(2);
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void record(double started, double t) {
    if (t < measure_from || t > measure_to) return;
    long us = (long)((t - started) * 1e6);
    if (us >= HIST_US) us = HIST_US - 1;
    hist[us]++;
    completed++;
}

static void start_request(conn_t *c) {
    if (session_mode && bind_req) {
        c->state = 1;
        send_all(c, bind_req, bind_len);
    } else {
        if (!session_mode) c->started = now();
        send_search(c);
    }
}

static void send_search(conn_t *c) {
    size_t i = next_req++ % nreqs;
    c->state = 2;
    send_all(c, search_file + req_off[i], req_len[i]);
}

/* One complete LDAPMessage arrived: react to its protocolOp tag. */
static void on_message(conn_t *c, const uint8_t *m, size_t len) {
    size_t p = 2;
    if (m[1] & 0x80) p += m[1] & 0x7f;
    p += 2 + m[p + 1]; /* messageID */
    if (p + 2 > len) { errors++; return; }
    uint8_t tag = m[p];
    size_t q = p + 2;
    if (m[p + 1] & 0x80) q += m[p + 1] & 0x7f;
    int code = (q + 2 < len) ? m[q + 2] : -1; /* resultCode: ENUMERATED, one octet */
    if (tag == 0x61) { /* BindResponse */
        if (code != 0) errors++;
        send_search(c);
    } else if (tag == 0x65) { /* SearchResultDone */
        double t = now();
        if (code != 0) errors++;
        if (session_mode) {
            send_all(c, UNBIND, sizeof UNBIND);
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            record(c->started, t);
            open_conn(c);
        } else {
            record(c->started, t);
            start_request(c);
        }
    }
}

static void on_readable(conn_t *c) {
    for (;;) {
        ssize_t n = read(c->fd, c->buf + c->have, BUF - c->have);
        if (n == 0) { fprintf(stderr, "server closed a connection\n"); exit(3); }
        if (n < 0) {
            if (errno == EAGAIN) return;
            perror("read");
            exit(3);
        }
        c->have += (size_t)n;
        size_t off = 0;
        while (c->have - off >= 2) {
            uint8_t *m = c->buf + off;
            size_t hl = 2, body = m[1];
            if (m[1] & 0x80) {
                size_t k = m[1] & 0x7f;
                if (c->have - off < 2 + k) break;
                body = 0;
                for (size_t i = 0; i < k; i++) body = body << 8 | m[2 + i];
                hl += k;
            }
            if (c->have - off < hl + body) break;
            long generation = c->generation;
            on_message(c, m, hl + body);
            off += hl + body;
            if (c->generation != generation) return; /* session ended and reconnected */
        }
        memmove(c->buf, c->buf + off, c->have - off);
        c->have -= off;
    }
}

int main(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: %s HOST PORT CONNS SECONDS WARMUP persist|session SEARCH [BIND]\n",
                argv[0]);
        return 2;
    }
    int nconns = atoi(argv[3]);
    double seconds = atof(argv[4]), warmup = atof(argv[5]);
    session_mode = strcmp(argv[6], "session") == 0;
    search_file = slurp(argv[7], &search_file_len);
    split_requests();
    if (argc > 8) bind_req = slurp(argv[8], &bind_len);
    if (nconns < 1 || nconns > MAX_CONNS) return 2;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    hist = calloc(HIST_US, sizeof *hist);
    conn_t *conns = calloc((size_t)nconns, sizeof *conns);
    ep = epoll_create1(0);
    double t0 = now();
    measure_from = t0 + warmup;
    measure_to = measure_from + seconds;
    for (int i = 0; i < nconns; i++) open_conn(&conns[i]);
    struct epoll_event evs[MAX_CONNS];
    while (now() < measure_to) {
        int n = epoll_wait(ep, evs, MAX_CONNS, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                fprintf(stderr, "connection error\n");
                return 3;
            }
            if (c->state == 0 && (evs[i].events & EPOLLOUT)) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                start_request(c);
            }
            if (evs[i].events & EPOLLIN) on_readable(c);
        }
    }
    long total = 0, p50 = -1, p99 = -1;
    for (long us = 0; us < HIST_US; us++) {
        total += hist[us];
        if (p50 < 0 && total * 2 >= completed) p50 = us;
        if (p99 < 0 && total * 100 >= completed * 99) p99 = us;
    }
    printf("{\"completed\": %ld, \"errors\": %ld, \"seconds\": %.3f, \"rate\": %.1f, "
           "\"p50_us\": %ld, \"p99_us\": %ld}\n",
           completed, errors, seconds, completed / seconds, p50, p99);
    return 0;
}
