/* 25_shm_python.c - named shared memory: C and Python's SharedMemory share one buffer by name */
#include <mproc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int reader(void *arg)
{
    /* A process that knows only the name opens the same segment. */
    mp_shm *s;
    if (mp_shm_new(&s, arg, 0, 0) != 0)
        return 1;
    printf("  child opened \"%s\" (%zu bytes) and reads: %s\n", mp_shm_name(s), mp_shm_size(s),
           (char *)mp_shm_buf(s));
    mp_shm_free(s);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    char name[64];
    snprintf(name, sizeof name, "mproc_demo_%d", (int)getpid());
    mp_shm *s;
    int rc = mp_shm_new(&s, name, 4096, MP_CREATE | MP_EXCL);
    if (rc != 0) {
        printf("mp_shm_new: %s\n", mp_strerror(rc));
        return 1;
    }
    strcpy(mp_shm_buf(s), "hello from C");
    printf("created /dev/shm/%s, wrote \"%s\"\n", mp_shm_name(s), (char *)mp_shm_buf(s));

    mp_process *p;
    mp_process_new(&p, reader, name, &(mp_process_opts){ .arg_size = sizeof name });
    mp_process_start(p);
    mp_process_join(p, MP_FOREVER);
    mp_process_free(p);

    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "python3 -c \"from multiprocessing import shared_memory as sm, resource_tracker as rt\n"
             "s = sm.SharedMemory(name='%s')\n"
             "rt.unregister(s._name, 'shared_memory')  # ours to unlink, not Python's\n"
             "print('  python3 reads:', bytes(s.buf[:12]).decode())\n"
             "s.buf[:15] = b'hello from Py!\\\\0'\n"
             "s.close()\" 2>/dev/null",
             name);
    fflush(stdout);
    if (system(cmd) == 0)
        printf("back in C, the buffer says: \"%s\"\n", (char *)mp_shm_buf(s));
    else
        printf("(python3 with multiprocessing.shared_memory is not here: skipped)\n");

    mp_shm_unlink(s);           /* the name lives until unlinked, as in POSIX */
    mp_shm_free(s);
    printf("unlinked: /dev/shm/%s is gone\n", name);
    return 0;
}
