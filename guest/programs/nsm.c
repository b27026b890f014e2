/*
 * nsm: talks to the Nitro Secure Module through /dev/nsm with raw CBOR requests
 * (the NSM_IOCTL_RAW ioctl), the way AWS's nsm-api client does.
 *
 *   nsm describe-nsm | describe-pcr N | extend-pcr N HEX | lock-pcr N | lock-pcrs N
 *   nsm get-random N
 *   nsm attest [--nonce HEX] [--user-data HEX] [--public-key HEX] [--count N]
 *
 * Responses are printed in CBOR diagnostic notation (byte strings in hex); get-random
 * prints N random bytes in hex; attest prints the document in base64 between
 * -----BEGIN/END ATTESTATION DOCUMENT----- lines. An {"Error": ...} response prints
 * "nsm: NSM error: <name>" and exits with status 2; usage errors exit 64, I/O errors 1.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define NSM_IOCTL_RAW 0xC0200A00UL /* _IOWR(0x0A, 0, struct nsm_raw) */
#define REQ_MAX 0x1000
#define RESP_MAX 0x3000

struct nsm_iovec { uint64_t addr, len; };
struct nsm_raw { struct nsm_iovec request, response; };

static _Noreturn void usage(void)
{
    fputs("usage: nsm describe-nsm | describe-pcr N | extend-pcr N HEX | lock-pcr N |\n"
          "           lock-pcrs N | get-random N |\n"
          "           attest [--nonce HEX] [--user-data HEX] [--public-key HEX] [--count N]\n", stderr);
    exit(64);
}

static _Noreturn void die(const char *msg)
{
    fprintf(stderr, "nsm: %s\n", msg);
    exit(1);
}

/* ---- CBOR encoder (definite lengths, shortest integer forms) ---- */

struct buf { uint8_t d[REQ_MAX]; size_t n; };

static void put(struct buf *b, const void *p, size_t n)
{
    if (n > sizeof b->d - b->n)
        die("request larger than 4096 bytes");
    memcpy(b->d + b->n, p, n);
    b->n += n;
}

static void head(struct buf *b, unsigned major, uint64_t v)
{
    uint8_t h[9];
    size_t n;
    h[0] = (uint8_t)(major << 5);
    if (v < 24) { h[0] |= (uint8_t)v; n = 1; }
    else if (v <= 0xFF) { h[0] |= 24; h[1] = (uint8_t)v; n = 2; }
    else if (v <= 0xFFFF) { h[0] |= 25; h[1] = (uint8_t)(v >> 8); h[2] = (uint8_t)v; n = 3; }
    else if (v <= 0xFFFFFFFFu) {
        h[0] |= 26;
        for (int i = 0; i < 4; i++) h[1 + i] = (uint8_t)(v >> (24 - 8 * i));
        n = 5;
    } else {
        h[0] |= 27;
        for (int i = 0; i < 8; i++) h[1 + i] = (uint8_t)(v >> (56 - 8 * i));
        n = 9;
    }
    put(b, h, n);
}

static void text(struct buf *b, const char *s) { head(b, 3, strlen(s)); put(b, s, strlen(s)); }
static void bytes(struct buf *b, const uint8_t *p, size_t n) { head(b, 2, n); put(b, p, n); }
static void null(struct buf *b) { uint8_t v = 0xF6; put(b, &v, 1); }

/* ---- CBOR decoder (definite lengths; bounds-checked; depth-limited) ---- */

enum kind { K_UINT, K_NINT, K_BYTES, K_TEXT, K_ARRAY, K_MAP, K_SIMPLE, K_FLOAT };

struct item {
    enum kind kind;
    uint64_t val;          /* integer value, length, count or simple value */
    const uint8_t *ptr;    /* bytes/text payload; first child for arrays/maps */
    const uint8_t *end;    /* end of the whole item */
};

static const uint8_t *g_end;

static int decode(const uint8_t *p, int depth, struct item *it);

static int skip_children(const uint8_t *p, uint64_t count, int depth, const uint8_t **out)
{
    struct item c;
    for (uint64_t i = 0; i < count; i++) {
        if (decode(p, depth + 1, &c) < 0)
            return -1;
        p = c.end;
    }
    *out = p;
    return 0;
}

static int decode(const uint8_t *p, int depth, struct item *it)
{
    if (depth > 32 || p >= g_end)
        return -1;
    unsigned major = *p >> 5, info = *p & 31;
    p++;
    uint64_t v = 0;
    if (info < 24) v = info;
    else if (info <= 27) {
        size_t n = (size_t)1 << (info - 24);
        if ((size_t)(g_end - p) < n) return -1;
        for (size_t i = 0; i < n; i++) v = v << 8 | *p++;
    } else return -1; /* indefinite lengths and reserved values are not used by the NSM */
    it->val = v;
    it->ptr = p;
    switch (major) {
    case 0: it->kind = K_UINT; it->end = p; return 0;
    case 1: it->kind = K_NINT; it->end = p; return 0;
    case 2: case 3:
        if ((uint64_t)(g_end - p) < v) return -1;
        it->kind = major == 2 ? K_BYTES : K_TEXT;
        it->end = p + v;
        return 0;
    case 4: it->kind = K_ARRAY; return skip_children(p, v, depth, &it->end);
    case 5:
        if (v > UINT64_MAX / 2) return -1;
        it->kind = K_MAP;
        return skip_children(p, 2 * v, depth, &it->end);
    case 6: return decode(p, depth + 1, it); /* tag: show the tagged item */
    default:
        it->kind = info >= 25 && info <= 27 ? K_FLOAT : K_SIMPLE;
        it->end = p;
        return 0;
    }
}

static int text_is(const struct item *it, const char *s)
{
    return it->kind == K_TEXT && it->val == strlen(s) && memcmp(it->ptr, s, it->val) == 0;
}

/* Looks up text key `key` in map `m`; returns 0 and fills `val` when found. */
static int map_get(const struct item *m, const char *key, struct item *val)
{
    if (m->kind != K_MAP) return -1;
    const uint8_t *p = m->ptr;
    for (uint64_t i = 0; i < m->val; i++) {
        struct item k;
        if (decode(p, 1, &k) < 0 || decode(k.end, 1, val) < 0) return -1;
        if (text_is(&k, key)) return 0;
        p = val->end;
    }
    return -1;
}

static void print_item(const struct item *it, int indent)
{
    const uint8_t *p;
    switch (it->kind) {
    case K_UINT: printf("%llu", (unsigned long long)it->val); break;
    case K_NINT: printf("-%llu", (unsigned long long)it->val + 1); break;
    case K_BYTES:
        printf("h'");
        for (uint64_t i = 0; i < it->val; i++) printf("%02x", it->ptr[i]);
        printf("'");
        break;
    case K_TEXT: printf("\"%.*s\"", (int)it->val, (const char *)it->ptr); break;
    case K_ARRAY:
        printf("[");
        p = it->ptr;
        for (uint64_t i = 0; i < it->val; i++) {
            struct item c;
            decode(p, 1, &c);
            printf(i ? ", " : "");
            print_item(&c, indent);
            p = c.end;
        }
        printf("]");
        break;
    case K_MAP:
        printf("{");
        p = it->ptr;
        for (uint64_t i = 0; i < it->val; i++) {
            struct item k, v;
            decode(p, 1, &k);
            decode(k.end, 1, &v);
            printf("%s\n%*s", i ? "," : "", indent + 2, "");
            print_item(&k, indent + 2);
            printf(": ");
            print_item(&v, indent + 2);
            p = v.end;
        }
        printf("\n%*s}", indent, "");
        break;
    case K_SIMPLE:
        if (it->val == 20) printf("false");
        else if (it->val == 21) printf("true");
        else if (it->val == 22) printf("null");
        else printf("simple(%llu)", (unsigned long long)it->val);
        break;
    case K_FLOAT: printf("<float>"); break;
    }
}

/* ---- helpers ---- */

static uint64_t parse_uint(const char *s, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || v > max || s[0] == '-') {
        fprintf(stderr, "nsm: bad number %s (0..%llu)\n", s, (unsigned long long)max);
        exit(64);
    }
    return v;
}

static size_t parse_hex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 > cap) {
        fprintf(stderr, "nsm: bad hex string (even number of digits, at most %zu bytes)\n", cap);
        exit(64);
    }
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1 || !strchr("0123456789abcdefABCDEF", s[2 * i])
            || !strchr("0123456789abcdefABCDEF", s[2 * i + 1])) {
            fprintf(stderr, "nsm: bad hex digit in %s\n", s);
            exit(64);
        }
        out[i] = (uint8_t)v;
    }
    return n / 2;
}

static void print_base64(const uint8_t *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t col = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        char out[4] = {tab[v >> 18 & 63], tab[v >> 12 & 63],
                       i + 1 < n ? tab[v >> 6 & 63] : '=', i + 2 < n ? tab[v & 63] : '='};
        fwrite(out, 1, 4, stdout);
        if ((col += 4) == 64) { putchar('\n'); col = 0; }
    }
    if (col) putchar('\n');
}

static uint8_t g_resp[RESP_MAX];

#ifdef NSM_HOST_TRANSPORT
/*
 * Host-test build only (never in the image): instead of the ioctl, write each request
 * as <u32 LE length><bytes> to fd $NSM_REQUEST_FD and read the response the same way
 * from fd $NSM_RESPONSE_FD, so a test can answer with the emulator's NSM handler.
 */
static int env_fd(const char *name)
{
    const char *v = getenv(name);
    if (!v)
        die("host transport: fd variables not set");
    return atoi(v);
}

static void xfer(int fd, void *p, size_t n, int writing)
{
    for (size_t off = 0; off < n;) {
        ssize_t r = writing ? write(fd, (uint8_t *)p + off, n - off) : read(fd, (uint8_t *)p + off, n - off);
        if (r <= 0)
            die("host transport broken");
        off += (size_t)r;
    }
}

static size_t raw_request(const struct buf *req)
{
    uint32_t n = (uint32_t)req->n;
    int out = env_fd("NSM_REQUEST_FD"), in = env_fd("NSM_RESPONSE_FD");
    xfer(out, &n, 4, 1);
    xfer(out, (void *)req->d, req->n, 1);
    xfer(in, &n, 4, 0);
    if (n > sizeof g_resp)
        die("host transport: response too long");
    xfer(in, g_resp, n, 0);
    return n;
}
#else
static size_t raw_request(const struct buf *req)
{
    int fd = open("/dev/nsm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        perror("nsm: open /dev/nsm");
        exit(1);
    }
    struct nsm_raw raw = {
        {(uintptr_t)req->d, req->n},
        {(uintptr_t)g_resp, sizeof g_resp},
    };
    if (ioctl(fd, NSM_IOCTL_RAW, &raw) < 0) {
        perror("nsm: ioctl NSM_IOCTL_RAW");
        exit(1);
    }
    close(fd);
    if (raw.response.len > sizeof g_resp)
        die("driver reported a response longer than the buffer");
    return raw.response.len;
}
#endif

/* Sends the request, checks the response is CBOR, handles {"Error": ...}; returns it. */
static struct item transact(const struct buf *req)
{
    g_end = g_resp + raw_request(req);
    struct item top, err;
    if (decode(g_resp, 0, &top) < 0 || top.end != g_end)
        die("response is not one well-formed CBOR item");
    if (map_get(&top, "Error", &err) == 0) {
        fputs("nsm: NSM error: ", stderr);
        if (err.kind == K_TEXT) fprintf(stderr, "%.*s\n", (int)err.val, (const char *)err.ptr);
        else fputs("(malformed)\n", stderr);
        exit(2);
    }
    return top;
}

/* The body of a one-entry map response {name: body}; dies if the response is another kind. */
static struct item expect(const struct item *top, const char *name)
{
    struct item body;
    if (text_is(top, name)) return *top;
    if (top->kind != K_MAP || top->val != 1 || map_get(top, name, &body) < 0) {
        fprintf(stderr, "nsm: unexpected response to %s: ", name);
        fflush(stdout);
        print_item(top, 0);
        putchar('\n');
        exit(1);
    }
    return body;
}

static void show(const struct item *it)
{
    print_item(it, 0);
    putchar('\n');
}

static uint8_t nonce[1024], user_data[1024], public_key[1024];

int main(int argc, char **argv)
{
    struct buf req = {.n = 0};
    struct item top, body;
    if (argc < 2) usage();
    const char *cmd = argv[1];

    if (!strcmp(cmd, "describe-nsm") && argc == 2) {
        text(&req, "DescribeNSM");
        top = transact(&req);
        body = expect(&top, "DescribeNSM");
        show(&body);
    } else if (!strcmp(cmd, "describe-pcr") && argc == 3) {
        head(&req, 5, 1); text(&req, "DescribePCR");
        head(&req, 5, 1); text(&req, "index"); head(&req, 0, parse_uint(argv[2], 0xFFFF));
        top = transact(&req);
        body = expect(&top, "DescribePCR");
        show(&body);
    } else if (!strcmp(cmd, "extend-pcr") && argc == 4) {
        static uint8_t data[REQ_MAX];
        size_t n = parse_hex(argv[3], data, 4000);
        head(&req, 5, 1); text(&req, "ExtendPCR");
        head(&req, 5, 2); text(&req, "index"); head(&req, 0, parse_uint(argv[2], 0xFFFF));
        text(&req, "data"); bytes(&req, data, n);
        top = transact(&req);
        body = expect(&top, "ExtendPCR");
        show(&body);
    } else if (!strcmp(cmd, "lock-pcr") && argc == 3) {
        head(&req, 5, 1); text(&req, "LockPCR");
        head(&req, 5, 1); text(&req, "index"); head(&req, 0, parse_uint(argv[2], 0xFFFF));
        top = transact(&req);
        expect(&top, "LockPCR");
        puts("locked");
    } else if (!strcmp(cmd, "lock-pcrs") && argc == 3) {
        head(&req, 5, 1); text(&req, "LockPCRs");
        head(&req, 5, 1); text(&req, "range"); head(&req, 0, parse_uint(argv[2], 0xFFFF));
        top = transact(&req);
        expect(&top, "LockPCRs");
        puts("locked");
    } else if (!strcmp(cmd, "get-random") && argc == 3) {
        uint64_t want = parse_uint(argv[2], 1 << 20), got = 0;
        while (got < want) {
            req.n = 0;
            text(&req, "GetRandom");
            top = transact(&req);
            body = expect(&top, "GetRandom");
            struct item r;
            if (map_get(&body, "random", &r) < 0 || r.kind != K_BYTES || r.val == 0)
                die("GetRandom response without random bytes");
            for (uint64_t i = 0; i < r.val && got < want; i++, got++) printf("%02x", r.ptr[i]);
        }
        putchar('\n');
    } else if (!strcmp(cmd, "attest")) {
        long nn = -1, nu = -1, np = -1;
        uint64_t count = 1;
        for (int i = 2; i < argc; i += 2) {
            if (i + 1 >= argc) usage();
            if (!strcmp(argv[i], "--count")) count = parse_uint(argv[i + 1], 1000000);
            else if (!strcmp(argv[i], "--nonce")) nn = (long)parse_hex(argv[i + 1], nonce, sizeof nonce);
            else if (!strcmp(argv[i], "--user-data"))
                nu = (long)parse_hex(argv[i + 1], user_data, sizeof user_data);
            else if (!strcmp(argv[i], "--public-key"))
                np = (long)parse_hex(argv[i + 1], public_key, sizeof public_key);
            else usage();
        }
        head(&req, 5, 1); text(&req, "Attestation");
        head(&req, 5, 3);
        text(&req, "user_data"); if (nu < 0) null(&req); else bytes(&req, user_data, (size_t)nu);
        text(&req, "nonce"); if (nn < 0) null(&req); else bytes(&req, nonce, (size_t)nn);
        text(&req, "public_key"); if (np < 0) null(&req); else bytes(&req, public_key, (size_t)np);
        /* --count N: N requests in one process (a rate free of process start-up). */
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        struct item doc;
        for (uint64_t n = 0; n < (count ? count : 1); n++) {
            top = transact(&req);
            body = expect(&top, "Attestation");
            if (map_get(&body, "document", &doc) < 0 || doc.kind != K_BYTES)
                die("Attestation response without a document byte string");
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (count > 1) {
            double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
            printf("attest: %llu documents in %.3f s, %.1f per second\n",
                   (unsigned long long)count, s, (double)count / s);
        }
        puts("-----BEGIN ATTESTATION DOCUMENT-----");
        print_base64(doc.ptr, doc.val);
        puts("-----END ATTESTATION DOCUMENT-----");
    } else {
        usage();
    }
    return 0;
}
