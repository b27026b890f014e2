/*
 * Shared by the vsock test programs: address parsing, a monotonic clock, the test
 * byte pattern and CRC-32 (the zlib polynomial, so a host can check with zlib.crc32).
 *
 * Pattern: byte i of a transfer is (uint8_t)(i ^ (i >> 8) ^ (i >> 16)).
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

static inline void fill_pattern(uint8_t *p, size_t n, uint64_t offset)
{
    for (size_t k = 0; k < n; k++) {
        uint64_t i = offset + k;
        p[k] = (uint8_t)(i ^ (i >> 8) ^ (i >> 16));
    }
}

static uint32_t crc_table[256];

static inline void crc32_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

/* Continues a CRC-32: start with crc = 0, feed chunks in order. */
static inline uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
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

static inline void report_rate(const char *verb, uint64_t n, double secs, uint32_t crc)
{
    double rate = secs > 0 ? n / secs / (1024.0 * 1024.0) : 0.0;
    printf("%s %llu bytes in %.3f s (%.2f MiB/s) crc32 %08x\n",
           verb, (unsigned long long)n, secs, rate, crc);
    fflush(stdout);
}
#endif
