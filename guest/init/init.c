/*
 * nitro-emu enclave init: the boot contract of AWS Nitro Enclaves' init, written anew.
 *
 * Order (as the enclave's parent expects it):
 *   1. block all signals; mount devtmpfs on /dev; stdin/stdout/stderr on /dev/console;
 *   2. load /nsm.ko if the bootstrap ramdisk carries one (then delete it);
 *   3. heartbeat: connect to vsock (CID 3, port 9000), send 0xB7, expect 0xB7 back;
 *      skipped when /proc/cmdline holds the token `nitro_emu.heartbeat=off`
 *      (for machines without a vsock device);
 *   4. read /env (KEY=value per line) and /cmd (one argv element per line), delete them;
 *   5. chroot into /rootfs; mount /dev, /proc, /run, /tmp, /dev/shm, /dev/pts, /sys,
 *      cgroup v1 hierarchies (those the kernel can mount);
 *   6. run the command in its own session, reap every child until it exits;
 *   7. reboot(RB_AUTOBOOT), which ends the enclave.
 * Any failure before the command runs makes init exit, so the kernel panics
 * (`panic=30` on the command line), as on a real enclave.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define HEARTBEAT_CID 3
#define HEARTBEAT_PORT 9000
#define HEARTBEAT_BYTE 0xB7
#define HEARTBEAT_OFF "nitro_emu.heartbeat=off"
#define PATH_ENV "PATH=/sbin:/usr/sbin:/bin:/usr/bin"

static _Noreturn void fail(const char *what, const char *arg)
{
    int err = errno;
    fprintf(stderr, "init: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(err));
    fflush(stderr);
    exit(err ? err : 1);
}

static void warn_errno(const char *what, const char *arg)
{
    fprintf(stderr, "init: %s %s: %s\n", what, arg, strerror(errno));
}

static void mount_dev(void)
{
    if (mount("dev", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, NULL) < 0 && errno != EBUSY)
        fail("mount devtmpfs on", "/dev");
}

static void open_console(void)
{
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        fail("open", "/dev/console");
    for (int i = 0; i < 3; i++)
        if (dup2(fd, i) < 0)
            fail("dup2", "/dev/console");
    if (fd > 2)
        close(fd);
    setvbuf(stdout, NULL, _IOLBF, 0);
}

static void load_nsm_module(void)
{
    int fd = open("/nsm.ko", O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return;
    if (fd < 0)
        fail("open", "/nsm.ko");
    if (syscall(__NR_finit_module, fd, "", 0) < 0)
        fail("finit_module", "/nsm.ko");
    close(fd);
    if (unlink("/nsm.ko") < 0)
        warn_errno("unlink", "/nsm.ko");
}

/* True when the kernel command line holds `token` as a whole word. */
static int cmdline_has(const char *token)
{
    char buf[4096];
    ssize_t n = -1;
    int mounted = 0;
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0) {
        /* The bootstrap root has no /proc yet: mount one just for this. */
        mkdir("/proc", 0555);
        if (mount("proc", "/proc", "proc", MS_NODEV | MS_NOSUID | MS_NOEXEC, NULL) < 0)
            fail("mount proc on", "/proc");
        mounted = 1;
        fd = open("/proc/cmdline", O_RDONLY);
    }
    if (fd >= 0) {
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
    }
    if (mounted)
        umount("/proc");
    if (n < 0)
        fail("read", "/proc/cmdline");
    buf[n] = 0;
    size_t len = strlen(token);
    for (char *p = buf; (p = strstr(p, token)) != NULL; p += len) {
        int starts = p == buf || p[-1] == ' ' || p[-1] == '\t';
        char end = p[len];
        if (starts && (end == 0 || end == ' ' || end == '\t' || end == '\n'))
            return 1;
    }
    return 0;
}

static void heartbeat(void)
{
    struct sockaddr_vm sa = {
        .svm_family = AF_VSOCK,
        .svm_cid = HEARTBEAT_CID,
        .svm_port = HEARTBEAT_PORT,
    };
    uint8_t b = HEARTBEAT_BYTE;
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0)
        fail("heartbeat: socket", "AF_VSOCK");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        fail("heartbeat: connect", "vsock 3:9000");
    if (write(fd, &b, 1) != 1)
        fail("heartbeat: write", "vsock 3:9000");
    b = 0;
    ssize_t n = read(fd, &b, 1);
    if (n != 1)
        fail("heartbeat: read", "vsock 3:9000");
    if (b != HEARTBEAT_BYTE) {
        errno = EPROTO;
        fail("heartbeat: wrong reply byte from", "vsock 3:9000");
    }
    close(fd);
}

/* Reads a file of lines into a NULL-terminated array; NULL if the file is missing. */
static char **read_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        warn_errno("cannot open", path);
        return NULL;
    }
    char **v = NULL;
    size_t count = 0, cap = 0;
    for (;;) {
        char *line = NULL;
        size_t sz = 0;
        ssize_t n = getline(&line, &sz, f);
        if (n < 0) {
            free(line);
            break;
        }
        if (n > 0 && line[n - 1] == '\n')
            line[n - 1] = 0;
        if (count + 2 > cap) {
            cap = cap ? cap * 2 : 16;
            v = realloc(v, cap * sizeof *v);
            if (!v)
                fail("out of memory reading", path);
        }
        v[count++] = line;
        v[count] = NULL;
    }
    fclose(f);
    if (unlink(path) < 0)
        warn_errno("unlink", path);
    return v;
}

struct mnt {
    const char *src, *target, *type;
    unsigned long flags;
    const char *data;
    int optional; /* skip quietly if the target directory does not exist */
};

static const struct mnt rootfs_mounts[] = {
    {"proc", "/proc", "proc", MS_NODEV | MS_NOSUID | MS_NOEXEC, NULL, 0},
    {"tmpfs", "/run", "tmpfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, "mode=0755", 0},
    {"tmpfs", "/tmp", "tmpfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, NULL, 0},
    {"shm", "/dev/shm", "tmpfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, NULL, 0},
    {"devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, NULL, 0},
    {"sysfs", "/sys", "sysfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, NULL, 0},
    {"cgroup_root", "/sys/fs/cgroup", "tmpfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, "mode=0755", 1},
};

static void ensure_dir(const char *path)
{
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        fail("mkdir", path);
}

static void ensure_symlink(const char *target, const char *link)
{
    if (symlink(target, link) < 0 && errno != EEXIST)
        fail("symlink", link);
}

static void setup_rootfs(void)
{
    mount_dev();
    ensure_dir("/proc");
    ensure_dir("/run");
    ensure_dir("/tmp");
    ensure_dir("/sys");
    ensure_dir("/dev/shm");
    ensure_dir("/dev/pts");
    for (size_t i = 0; i < sizeof rootfs_mounts / sizeof rootfs_mounts[0]; i++) {
        const struct mnt *m = &rootfs_mounts[i];
        struct stat st;
        if (m->optional && stat(m->target, &st) < 0)
            continue;
        if (mount(m->src, m->target, m->type, m->flags, m->data) < 0)
            fail("mount", m->target);
        if (i == 0) {
            ensure_symlink("/proc/self/fd", "/dev/fd");
            ensure_symlink("/proc/self/fd/0", "/dev/stdin");
            ensure_symlink("/proc/self/fd/1", "/dev/stdout");
            ensure_symlink("/proc/self/fd/2", "/dev/stderr");
        }
    }
}

/* One cgroup v1 hierarchy per enabled controller listed in /proc/cgroups (if any). */
static void mount_cgroups(void)
{
    FILE *f = fopen("/proc/cgroups", "r");
    if (!f)
        return; /* kernel without cgroups (the tiny profile) */
    char line[256];
    if (!fgets(line, sizeof line, f)) {
        fclose(f);
        return;
    }
    while (fgets(line, sizeof line, f)) {
        char name[64];
        int hier, groups, enabled;
        if (sscanf(line, "%63s %d %d %d", name, &hier, &groups, &enabled) != 4) {
            errno = EINVAL;
            fail("parse", "/proc/cgroups");
        }
        if (!enabled)
            continue;
        char path[128];
        snprintf(path, sizeof path, "/sys/fs/cgroup/%s", name);
        ensure_dir(path);
        /* Linux >= 6.12 lists controllers whose cgroup v1 support is configured out
         * (CPUSETS_V1, MEMCG_V1): mounting those fails with EINVAL. AWS's init (written
         * for 6.6) would die here; we warn and go on, as the application does not
         * depend on it. */
        if (mount(name, path, "cgroup", MS_NODEV | MS_NOSUID | MS_NOEXEC, name) < 0) {
            warn_errno("mount cgroup", path);
            rmdir(path);
        }
    }
    fclose(f);
}

static pid_t launch(char **argv, char **envp)
{
    static char *default_argv[] = {"sh", NULL};
    static char *default_envp[] = {PATH_ENV, NULL};
    pid_t pid = fork();
    if (pid < 0)
        fail("fork", NULL);
    if (pid > 0)
        return pid;
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, NULL);
    setsid();
    setpgid(0, 0);
    if (!argv || !argv[0])
        argv = default_argv;
    if (!envp)
        envp = default_envp;
    putenv(PATH_ENV); /* the PATH execvpe searches */
    execvpe(argv[0], argv, envp);
    fail("exec", argv[0]);
}

static int reap_until(pid_t child)
{
    for (;;) {
        int status;
        pid_t pid = wait(&status);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            fail("wait", NULL);
        }
        if (pid != child)
            continue;
        if (WIFEXITED(status)) {
            if (WEXITSTATUS(status) != 0)
                fprintf(stderr, "init: command exited with status %d\n", WEXITSTATUS(status));
            return WEXITSTATUS(status);
        }
        fprintf(stderr, "init: command killed by signal %d\n", WTERMSIG(status));
        return 128 + WTERMSIG(status);
    }
}

int main(void)
{
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);

    mount_dev();
    open_console();
    load_nsm_module();
    if (cmdline_has(HEARTBEAT_OFF))
        fprintf(stderr, "init: heartbeat skipped (" HEARTBEAT_OFF ")\n");
    else
        heartbeat();

    char **env = read_lines("/env");
    char **cmd = read_lines("/cmd");

    if (chdir("/rootfs") < 0)
        fail("chdir", "/rootfs");
    if (chroot("/rootfs") < 0)
        fail("chroot", "/rootfs");
    if (chdir("/") < 0)
        fail("chdir", "/");
    setup_rootfs();
    mount_cgroups();

    reap_until(launch(cmd, env));
    sync();
    reboot(RB_AUTOBOOT);
    fail("reboot", NULL);
}
