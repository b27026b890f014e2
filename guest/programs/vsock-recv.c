/*
 * vsock-recv PORT: accepts one connection on PORT, reads until the peer closes, checks
 * that the bytes are the test pattern (see vsock-common.h), and prints the byte count,
 * time, rate and "pattern ok" or the offset of the first wrong byte.
 * Prints "vsock-recv: listening on port N" once ready.
 */
#include <unistd.h>
#include "vsock-common.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fputs("usage: vsock-recv PORT\n", stderr);
        return 64;
    }
    uint32_t port = (uint32_t)arg_uint("vsock-recv", "port", argv[1], 0xFFFFFFFEu);
    const uint8_t *pattern = make_pattern("vsock-recv");
    int lfd = vsock_listen("vsock-recv", port);
    printf("vsock-recv: listening on port %u\n", port);
    fflush(stdout);
    int fd;
    do {
        fd = accept(lfd, NULL, NULL);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        perror("vsock-recv: accept");
        return 1;
    }
    close(lfd);
    static uint8_t buf[CHUNK];
    uint64_t got = 0, bad = UINT64_MAX;
    double t0 = now_s();
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "vsock-recv: read after %llu bytes: %s\n",
                    (unsigned long long)got, strerror(errno));
            return 1;
        }
        if (bad == UINT64_MAX && memcmp(buf, pattern + got % PATTERN_PERIOD, (size_t)n)) {
            for (ssize_t i = 0; i < n; i++)
                if (buf[i] != pattern[(got + (uint64_t)i) % PATTERN_PERIOD]) {
                    bad = got + (uint64_t)i;
                    break;
                }
        }
        got += (uint64_t)n;
    }
    double secs = now_s() - t0;
    close(fd);
    char check[64] = " pattern ok";
    if (bad != UINT64_MAX)
        snprintf(check, sizeof check, " pattern WRONG at byte %llu", (unsigned long long)bad);
    report_rate("received", got, secs, check);
    return bad == UINT64_MAX ? 0 : 1;
}
