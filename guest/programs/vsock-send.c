/*
 * vsock-send CID PORT BYTES: connects to (CID, PORT), sends BYTES bytes of the test
 * pattern (see vsock-common.h; the receiver checks it), closes, and prints the count,
 * time and rate.
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
    const uint8_t *pattern = make_pattern("vsock-send");
    struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "vsock-send: connect to %u:%u: %s\n", cid, port, strerror(errno));
        return 1;
    }
    uint64_t sent = 0;
    double t0 = now_s();
    while (sent < total) {
        size_t chunk = total - sent < CHUNK ? (size_t)(total - sent) : CHUNK;
        ssize_t w = write(fd, pattern + sent % PATTERN_PERIOD, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "vsock-send: write after %llu bytes: %s\n",
                    (unsigned long long)sent, strerror(errno));
            return 1;
        }
        sent += (uint64_t)w;
    }
    shutdown(fd, SHUT_WR);
    /* Wait for the peer to close so the time covers delivery, not just queueing. */
    static uint8_t sink[4096];
    while (read(fd, sink, sizeof sink) > 0)
        ;
    close(fd);
    report_rate("sent", sent, now_s() - t0, "");
    return 0;
}
