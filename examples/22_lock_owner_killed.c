/* 22_lock_owner_killed.c - a holder killed with kill -9 cannot wedge the lock: MP_EOWNERDEAD */
#include <mproc.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct shared {
    mp_lock *lock;
    mp_event *holding;
    char record[64];        /* what the lock guards */
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Takes the lock, starts rewriting the record, and never finishes. */
static int writer(void *arg)
{
    struct shared *s = arg;
    mp_lock_acquire(s->lock, MP_FOREVER);
    strcpy(s->record, "half-writ");
    mp_event_set(s->holding);
    for (;;)
        pause();
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    struct shared *s = mp_shared_alloc(sizeof *s);
    mp_lock_new(&s->lock);
    mp_event_new(&s->holding);
    strcpy(s->record, "consistent");

    mp_process *p;
    mp_process_new(&p, writer, s, NULL);
    mp_process_start(p);
    mp_event_wait(s->holding, 10);
    printf("the writer (pid %d) holds the lock, mid-update: \"%s\"\n", (int)mp_process_pid(p),
           s->record);
    mp_process_kill(p);
    mp_process_join(p, MP_FOREVER);
    printf("kill -9: it died holding the lock. Python's Lock would now block forever.\n");

    double t0 = now();
    int rc = mp_lock_acquire(s->lock, 5);
    printf("mp_lock_acquire: %s after %.3f ms - the lock is ours, and we are told\n",
           mp_errname(rc), (now() - t0) * 1e3);
    if (rc == MP_EOWNERDEAD) {
        printf("  that the record may be half-written (\"%s\"), so we repair it\n", s->record);
        strcpy(s->record, "repaired");
    }
    mp_lock_release(s->lock);
    printf("next acquire: %s; record \"%s\"\n", mp_errname(mp_lock_acquire(s->lock, 0)), s->record);
    mp_lock_release(s->lock);

    mp_process_free(p);
    mp_event_free(s->holding);
    mp_lock_free(s->lock);
    mp_shared_free(s);
    return rc == MP_EOWNERDEAD ? 0 : 1;
}
