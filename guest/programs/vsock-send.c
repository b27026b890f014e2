/*
 * vsock-send CID PORT BYTES: connects to (CID, PORT), sends BYTES bytes of the test
 * pattern (see vsock-common.h), closes, and prints the count, time, rate and CRC-32.
 */
#include <unistd.h>
#include "vsock-common.h"

int main(int argc, char **argv)
{
    if (argc != 4) {
        fputs("usage: vsock-send CID PORT BYTES\n", stderr);
        return 64;
    }
    uint32_t cid = (uint32_t)arg_uint("vsock-send", "CID", argv[1], 0xFFFFFFFFu);
    uint32_t port = (uint32_t)arg_uint("vsock-send", "port", argv[2], 0xFFFFFFFEu);
    uint64_t total = arg_uint("vsock-send", "byte count", argv[3], UINT64_MAX);
    crc32_init();
    struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "vsock-send: connect to %u:%u: %s\n", cid, port, strerror(errno));
        return 1;
    }
    static uint8_t buf[65536];
    uint64_t sent = 0;
    uint32_t crc = 0;
    double t0 = now_s();
    while (sent < total) {
        size_t chunk = total - sent < sizeof buf ? (size_t)(total - sent) : sizeof buf;
        fill_pattern(buf, chunk, sent);
        crc = crc32_update(crc, buf, chunk);
        for (size_t off = 0; off < chunk;) {
            ssize_t w = write(fd, buf + off, chunk - off);
            if (w < 0) {
                if (errno == EINTR) continue;
                fprintf(stderr, "vsock-send: write after %llu bytes: %s\n",
                        (unsigned long long)(sent + off), strerror(errno));
                return 1;
            }
            off += (size_t)w;
        }
        sent += chunk;
    }
    shutdown(fd, SHUT_WR);
    /* Wait for the peer to close so the time covers delivery, not just queueing. */
    while (read(fd, buf, sizeof buf) > 0)
        ;
    close(fd);
    report_rate("sent", sent, now_s() - t0, crc);
    return 0;
}
