/*
 * Fault injection for the end-to-end tests, loaded with LD_PRELOAD into
 * the real plugbus binary: while the file named by PLUGBUS_FAULT_FSYNC
 * exists, fsync and fdatasync fail with EIO (as on a failing disk);
 * otherwise they do what libc does. Test-only; never shipped.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *trigger = getenv("PLUGBUS_FAULT_FSYNC");
    return trigger != NULL && access(trigger, F_OK) == 0;
}

int fsync(int fd) {
    static int (*real)(int) = NULL;
    if (failing()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int) = NULL;
    if (failing()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    return real(fd);
}
