/* LD_PRELOAD shim for bench_slowdisk.py: every fsync/fdatasync of the process takes
 * SLOWFSYNC_MS milliseconds longer, as on a worn SD card. Counts calls in SLOWFSYNC_COUNT. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void slow_down(void) {
    const char *ms = getenv("SLOWFSYNC_MS");
    long delay = ms ? atol(ms) : 200;
    struct timespec pause = {delay / 1000, (delay % 1000) * 1000000L};
    nanosleep(&pause, NULL);
    const char *count = getenv("SLOWFSYNC_COUNT");
    if (count) {
        FILE *log = fopen(count, "a");
        if (log) { fputc('.', log); fclose(log); }
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow_down();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow_down();
    return real(fd);
}
