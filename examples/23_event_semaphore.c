/* 23_event_semaphore.c - an Event as a starting gun, a Semaphore as a car park with two spaces */
#include <mproc.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

struct track {
    mp_event *gun;
    mp_semaphore *spaces;
    atomic_int parked, most_parked;
};

struct who { struct track *t; int id; };

/* Waits for the gun, then looks for a space, parks a moment and leaves. */
static int car(void *arg)
{
    struct who *w = arg;
    struct track *t = w->t;
    if (mp_event_wait(t->gun, 10) != 0)
        return 1;
    mp_semaphore_acquire(t->spaces, MP_FOREVER);
    int n = atomic_fetch_add(&t->parked, 1) + 1;
    for (int m = atomic_load(&t->most_parked); n > m &&
         !atomic_compare_exchange_weak(&t->most_parked, &m, n);)
        ;
    printf("  car %d parks (%d of 2 spaces taken)\n", w->id, n);
    usleep(50000);
    atomic_fetch_sub(&t->parked, 1);
    printf("  car %d leaves\n", w->id);
    mp_semaphore_release(t->spaces);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    struct track *t = mp_shared_alloc(sizeof *t);
    mp_event_new(&t->gun);
    mp_semaphore_new(&t->spaces, 2);

    mp_process *p[6];
    for (int i = 0; i < 6; i++) {
        struct who w = { t, i };
        mp_process_new(&p[i], car, &w, &(mp_process_opts){ .arg_size = sizeof w });
        mp_process_start(p[i]);
    }
    printf("six cars wait on an Event (is_set: %d)...\n", mp_event_is_set(t->gun));
    usleep(100000);
    printf("...bang: mp_event_set wakes them all at once; a Semaphore(2) lets two park at a time\n");
    mp_event_set(t->gun);
    for (int i = 0; i < 6; i++) {
        mp_process_join(p[i], MP_FOREVER);
        mp_process_free(p[i]);
    }
    printf("never more than %d parked; spaces free again: %d\n", atomic_load(&t->most_parked),
           mp_semaphore_value(t->spaces));
    mp_semaphore_free(t->spaces);
    mp_event_free(t->gun);
    mp_shared_free(t);
    return 0;
}
