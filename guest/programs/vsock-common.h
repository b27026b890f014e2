/*
 * Shared by the vsock test programs: address parsing, a monotonic clock and the test
 * byte pattern (guest/vsock_pattern.py is the host's side of it).
 *
 * Pattern: byte i of a transfer is (uint8_t)(i ^ (i >> 8) ^ (i >> 16)). It repeats every
 * 16 MiB, so a program makes one period (plus one write's worth, so that any chunk is
 * contiguous) before it starts the clock: moving or checking data then costs no per-byte
 * work of its own, and a benchmark measures the transport, not the program.
 */
#ifndef VSOCK_COMMON_H
#define VSOCK_COMMON_H
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <linux/vm_sockets.h>

static inline uint64_t arg_uint(const char *prog, const char *what, const char *s, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-' || v > max) {
        fprintf(stderr, "%s: bad %s %s (0..%llu)\n", prog, what, s, (unsigned long long)max);
        exit(64);
    }
    return v;
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

#define PATTERN_PERIOD (16u << 20)
#define CHUNK 65536u

/* One period of the pattern and CHUNK bytes more: bytes [off, off + CHUNK) of the stream
 * are pattern + off % PATTERN_PERIOD. */
static inline const uint8_t *make_pattern(const char *prog)
{
    uint8_t *p = malloc(PATTERN_PERIOD + CHUNK);
    if (p == NULL) {
        fprintf(stderr, "%s: no memory for the test pattern\n", prog);
        exit(1);
    }
    for (uint32_t i = 0; i < PATTERN_PERIOD + CHUNK; i++)
        p[i] = (uint8_t)(i ^ (i >> 8) ^ (i >> 16));
    return p;
}

static inline int vsock_listen(const char *prog, uint32_t port)
{
    struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 128) < 0) {
        fprintf(stderr, "%s: listen on vsock port %u: %s\n", prog, port, strerror(errno));
        exit(1);
    }
    return fd;
}

static inline void report_rate(const char *verb, uint64_t n, double secs, const char *check)
{
    double rate = secs > 0 ? n / secs / (1024.0 * 1024.0) : 0.0;
    printf("%s %llu bytes in %.3f s (%.2f MiB/s)%s\n", verb, (unsigned long long)n, secs, rate,
           check);
    fflush(stdout);
}
#endif
