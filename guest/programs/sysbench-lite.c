/*
 * sysbench-lite [SYSCALLS [FAULTS [FORKS]]]: times the costs an emulator adds to a
 * guest, and prints µs per operation for each:
 *   syscall    SYSCALLS getppid() calls            (default 10000)
 *   pagefault  FAULTS first touches of fresh anonymous pages, one fault each (10000)
 *   fork-exec  FORKS fork + exec of /bin/true + wait (100)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void report(const char *name, long n, double secs)
{
    printf("%-10s %8ld ops %10.3f s %10.3f us/op\n", name, n, secs, secs * 1e6 / (double)n);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    long count[3] = {10000, 10000, 100};
    if (argc > 4) {
        fputs("usage: sysbench-lite [SYSCALLS [FAULTS [FORKS]]]  (each 1..100000000)\n", stderr);
        return 64;
    }
    for (int i = 1; i < argc; i++) {
        char *end;
        count[i - 1] = strtol(argv[i], &end, 10);
        if (end == argv[i] || *end || count[i - 1] <= 0 || count[i - 1] > 100000000) {
            fprintf(stderr, "sysbench-lite: bad count %s (1..100000000)\n", argv[i]);
            return 64;
        }
    }
    long n = count[0];
    printf("sysbench-lite: syscalls=%ld faults=%ld forks=%ld\n", count[0], count[1], count[2]);

    double t0 = now_s();
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid); /* not cached by libc */
    report("syscall", n, now_s() - t0);

    n = count[1];
    long page = sysconf(_SC_PAGESIZE);
    size_t len = (size_t)n * (size_t)page;
    volatile uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "sysbench-lite: mmap %zu bytes: %s\n", len, strerror(errno));
        return 1;
    }
    t0 = now_s();
    for (long i = 0; i < n; i++)
        mem[(size_t)i * (size_t)page] = 1;
    report("pagefault", n, now_s() - t0);
    munmap((void *)mem, len);

    long forks = count[2];
    t0 = now_s();
    for (long i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            execl("/bin/true", "true", (char *)NULL);
            _exit(127);
        }
        int status;
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
            fprintf(stderr, "sysbench-lite: fork+exec of /bin/true failed at %ld\n", i);
            return 1;
        }
    }
    report("fork-exec", forks, now_s() - t0);
    return 0;
}
