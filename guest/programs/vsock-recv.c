/*
 * vsock-recv PORT: accepts one connection on PORT, reads until the peer closes, and
 * prints the byte count, time, rate and CRC-32 (compare with vsock-send's line).
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
    crc32_init();
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
    static uint8_t buf[65536];
    uint64_t got = 0;
    uint32_t crc = 0;
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
        crc = crc32_update(crc, buf, (size_t)n);
        got += (uint64_t)n;
    }
    double secs = now_s() - t0;
    close(fd);
    report_rate("received", got, secs, crc);
    return 0;
}
