/*
 * sysbench-lite [SYSCALLS [FAULTS [FORKS [LOOPS [SHA_MIB]]]]]: times the costs an
 * emulator adds to a guest, and prints µs per operation for each:
 *   syscall    SYSCALLS getppid() calls            (default 100000)
 *   pagefault  FAULTS first touches of fresh anonymous pages, one fault each (10000)
 *   fork-exec  FORKS fork + exec of /bin/true + wait (100)
 *   intloop    LOOPS ops of 1000 iterations of a register-only integer loop (20000)
 *   sha256     SHA_MIB ops of SHA-256 over 1 MiB each, one digest (16); the line ends
 *              with the digest of SHA_MIB MiB of the pattern byte i = i ^ i>>8 ^ i>>16,
 *              so a host can check that the emulated CPU computed it right. gcc -O2
 *              vectorises its message schedule with SSE2
 *   sha256-int the same source compiled without vectorisation (integer registers only),
 *              which tells SSE emulation apart from the rest
 * The first three measure per-event costs (exceptions, privilege changes, the kernel's
 * paths); the last two measure translated code alone.
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

static void report(const char *name, long n, double secs, const char *extra)
{
    printf("%-10s %8ld ops %10.3f s %10.3f us/op%s\n", name, n, secs, secs * 1e6 / (double)n,
           extra);
    fflush(stdout);
}

/* -- SHA-256 (FIPS 180-4), the plain reference form ------------------------------------ */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static inline __attribute__((always_inline)) void sha256_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) +
                      sha_k[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

/* The whole computation over n bytes (n a multiple of 64) as 64 hex digits into out. */
static inline __attribute__((always_inline)) void sha256_body(const uint8_t *data, size_t n,
                                                               char out[65])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    for (size_t off = 0; off < n; off += 64)
        sha256_block(h, data + off);
    uint8_t tail[64] = {0x80};
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++)
        tail[63 - i] = (uint8_t)(bits >> (8 * i));
    sha256_block(h, tail);
    for (int i = 0; i < 8; i++)
        sprintf(out + 8 * i, "%08x", h[i]);
}

/* As gcc -O2 compiles it: the message schedule vectorised with SSE2. */
static void sha256_hex(const uint8_t *data, size_t n, char out[65])
{
    sha256_body(data, n, out);
}

/* The same source kept to general-purpose registers (no SSE). */
__attribute__((optimize("no-tree-vectorize")))
static void sha256_hex_scalar(const uint8_t *data, size_t n, char out[65])
{
    sha256_body(data, n, out);
}

/* -- the benchmarks ---------------------------------------------------------------------- */

static void bench_syscall(long n)
{
    double t0 = now_s();
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid); /* not cached by libc */
    report("syscall", n, now_s() - t0, "");
}

static int bench_pagefault(long n)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t len = (size_t)n * (size_t)page;
    volatile uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "sysbench-lite: mmap %zu bytes: %s\n", len, strerror(errno));
        return 1;
    }
    double t0 = now_s();
    for (long i = 0; i < n; i++)
        mem[(size_t)i * (size_t)page] = 1;
    report("pagefault", n, now_s() - t0, "");
    munmap((void *)mem, len);
    return 0;
}

static int bench_fork_exec(long n)
{
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
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
    report("fork-exec", n, now_s() - t0, "");
    return 0;
}

static void bench_intloop(long n)
{
    /* xorshift64 and a multiply-accumulate: a dependent chain of register ALU ops,
     * one conditional branch per iteration; the result is printed so none of it is
     * optimised away. */
    uint64_t x = 88172645463325252ull, acc = 0;
    double t0 = now_s();
    for (long i = 0; i < n * 1000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc += (x & 0xFFFF) * 3 + (acc >> 3);
    }
    char extra[64];
    snprintf(extra, sizeof extra, " (x1000 iterations) result %016llx",
             (unsigned long long)(acc ^ x));
    report("intloop", n, now_s() - t0, extra);
}

static int bench_sha256(long mib)
{
    size_t n = (size_t)mib << 20;
    uint8_t *data = malloc(n);
    if (data == NULL) {
        fprintf(stderr, "sysbench-lite: malloc %zu bytes failed\n", n);
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        data[i] = (uint8_t)(i ^ (i >> 8) ^ (i >> 16));
    static const struct {
        const char *name;
        void (*hash)(const uint8_t *, size_t, char[65]);
    } kinds[] = {{"sha256", sha256_hex}, {"sha256-int", sha256_hex_scalar}};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        char digest[65], extra[96];
        double t0 = now_s();
        kinds[k].hash(data, n, digest);
        double secs = now_s() - t0;
        snprintf(extra, sizeof extra, " (1 MiB each) digest %s", digest);
        report(kinds[k].name, mib, secs, extra);
    }
    free(data);
    return 0;
}

int main(int argc, char **argv)
{
    long count[5] = {100000, 10000, 100, 20000, 16};
    if (argc > 6) {
        fputs("usage: sysbench-lite [SYSCALLS [FAULTS [FORKS [LOOPS [SHA_MIB]]]]]"
              "  (each 1..100000000, SHA_MIB 1..1024)\n", stderr);
        return 64;
    }
    for (int i = 1; i < argc; i++) {
        char *end;
        long max = i == 5 ? 1024 : 100000000;
        count[i - 1] = strtol(argv[i], &end, 10);
        if (end == argv[i] || *end || count[i - 1] <= 0 || count[i - 1] > max) {
            fprintf(stderr, "sysbench-lite: bad count %s (1..%ld)\n", argv[i], max);
            return 64;
        }
    }
    printf("sysbench-lite: syscalls=%ld faults=%ld forks=%ld loops=%ld sha_mib=%ld\n",
           count[0], count[1], count[2], count[3], count[4]);
    bench_syscall(count[0]);
    if (bench_pagefault(count[1]) || bench_fork_exec(count[2]))
        return 1;
    bench_intloop(count[3]);
    return bench_sha256(count[4]);
}
