/*
 * vsock-echo PORT: a vsock stream server that echoes every byte back, one child
 * process per connection, until killed. Prints "vsock-echo: listening on port N".
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include "vsock-common.h"

static void serve(int fd)
{
    static uint8_t buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("vsock-echo: read");
            break;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0) {
                if (errno == EINTR) continue;
                perror("vsock-echo: write");
                return;
            }
            off += w;
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fputs("usage: vsock-echo PORT\n", stderr);
        return 64;
    }
    uint32_t port = (uint32_t)arg_uint("vsock-echo", "port", argv[1], 0xFFFFFFFEu);
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    int lfd = vsock_listen("vsock-echo", port);
    printf("vsock-echo: listening on port %u\n", port);
    fflush(stdout);
    for (;;) {
        struct sockaddr_vm peer;
        socklen_t len = sizeof peer;
        int fd = accept(lfd, (struct sockaddr *)&peer, &len);
        if (fd < 0) {
            if (errno == EINTR) continue;
            perror("vsock-echo: accept");
            return 1;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(lfd);
            serve(fd);
            _exit(0);
        }
        if (pid < 0)
            perror("vsock-echo: fork");
        close(fd);
    }
}
