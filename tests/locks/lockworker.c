/* The processes of tests/locks.rs: take, test and release file locks the way programs do,
 * so that each process is its own POSIX lock owner. Built by the test with cc.
 *
 *   lockworker count flock|posix|ofd PATH N   N times: open, lock, read a number, write it
 *                                             plus one, unlock (even rounds) or just close
 *   lockworker hold flock|posix|ofd PATH START LEN
 *                                             lock (waiting), print "locked", hold until
 *                                             stdin closes
 *   lockworker try flock|posix PATH           one attempt without waiting: "ok" or the errno
 *   lockworker getlk PATH START LEN           F_GETLK for a write lock: "TYPE START LEN PID"
 *   lockworker cycle flock|posix PATH N       N times lock then unlock one open file (no
 *                                             waiting): prints the microseconds a pair took
 *   lockworker wait posix|flock PATH SECS     wait for the lock with an alarm after SECS:
 *                                             "ok" or the errno (EINTR once interrupted)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static int lock_fd(int fd, const char *kind, int write, int wait, long start, long len) {
    if (strcmp(kind, "flock") == 0)
        return flock(fd, (write ? LOCK_EX : LOCK_SH) | (wait ? 0 : LOCK_NB));
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = write ? F_WRLCK : F_RDLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    int ofd = strcmp(kind, "ofd") == 0;
    int cmd = ofd ? (wait ? F_OFD_SETLKW : F_OFD_SETLK) : (wait ? F_SETLKW : F_SETLK);
    return fcntl(fd, cmd, &fl);
}

static int unlock_fd(int fd, const char *kind) {
    if (strcmp(kind, "flock") == 0)
        return flock(fd, LOCK_UN);
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_UNLCK;
    fl.l_whence = SEEK_SET;
    return fcntl(fd, strcmp(kind, "ofd") == 0 ? F_OFD_SETLK : F_SETLK, &fl);
}

static void die(const char *what) {
    fprintf(stderr, "lockworker: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void on_alarm(int sig) { (void)sig; }

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *mode = argv[1];
    setvbuf(stdout, NULL, _IONBF, 0);
    if (strcmp(mode, "count") == 0 && argc == 5) {
        const char *kind = argv[2], *path = argv[3];
        long n = atol(argv[4]);
        for (long i = 0; i < n; i++) {
            int fd = open(path, O_RDWR);
            if (fd < 0) die("open");
            if (lock_fd(fd, kind, 1, 1, 0, 0) < 0) die("lock");
            char buf[32] = {0};
            ssize_t got = pread(fd, buf, sizeof buf - 1, 0);
            if (got < 0) die("read");
            long value = atol(buf);
            int len = snprintf(buf, sizeof buf, "%ld\n", value + 1);
            if (pwrite(fd, buf, len, 0) != len) die("write");
            if (i % 2 == 0 && unlock_fd(fd, kind) < 0) die("unlock");
            if (close(fd) < 0) die("close");
        }
        return 0;
    }
    if (strcmp(mode, "cycle") == 0 && argc == 5) {
        int fd = open(argv[3], O_RDWR);
        if (fd < 0) die("open");
        long n = atol(argv[4]);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long i = 0; i < n; i++) {
            if (lock_fd(fd, argv[2], 1, 0, 0, 0) < 0) die("lock");
            if (unlock_fd(fd, argv[2]) < 0) die("unlock");
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double us = (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
        printf("%.1f\n", us / n);
        return 0;
    }
    if (strcmp(mode, "hold") == 0 && argc == 6) {
        int fd = open(argv[3], O_RDWR);
        if (fd < 0) die("open");
        if (lock_fd(fd, argv[2], 1, 1, atol(argv[4]), atol(argv[5])) < 0) die("lock");
        printf("locked\n");
        char c;
        while (read(0, &c, 1) > 0) {}
        return 0;
    }
    if (strcmp(mode, "try") == 0 && argc == 4) {
        int fd = open(argv[3], O_RDWR);
        if (fd < 0) die("open");
        if (lock_fd(fd, argv[2], 1, 0, 0, 0) == 0) printf("ok\n");
        else printf("%s\n", errno == EAGAIN ? "EAGAIN" : strerror(errno));
        return 0;
    }
    if (strcmp(mode, "getlk") == 0 && argc == 5) {
        int fd = open(argv[2], O_RDWR);
        if (fd < 0) die("open");
        struct flock fl;
        memset(&fl, 0, sizeof fl);
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = atol(argv[3]);
        fl.l_len = atol(argv[4]);
        if (fcntl(fd, F_GETLK, &fl) < 0) die("getlk");
        const char *type = fl.l_type == F_WRLCK ? "W" : fl.l_type == F_RDLCK ? "R" : "U";
        printf("%s %ld %ld %d\n", type, (long)fl.l_start, (long)fl.l_len, (int)fl.l_pid);
        return 0;
    }
    if (strcmp(mode, "wait") == 0 && argc == 5) {
        int fd = open(argv[3], O_RDWR);
        if (fd < 0) die("open");
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm; /* no SA_RESTART: the wait ends with EINTR */
        sigaction(SIGALRM, &sa, NULL);
        alarm(atoi(argv[4]));
        if (lock_fd(fd, argv[2], 1, 1, 0, 0) == 0) printf("ok\n");
        else printf("%s\n", errno == EINTR ? "EINTR" : strerror(errno));
        return 0;
    }
    return 2;
}
