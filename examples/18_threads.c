/* 18_threads.c - threads share their process's memory; processes do not */
#include <mproc.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

static _Atomic int counter;

static int count_up(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++)
        atomic_fetch_add(&counter, 1);
    return 7;
}

static int sleepy(void *arg)
{
    (void)arg;
    usleep(200000);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    printf("%s starts four threads that each add 1000 to a global counter.\n",
           mp_thread_name(mp_current_thread()));
    mp_thread *t[4];
    for (int i = 0; i < 4; i++) {
        mp_thread_new(&t[i], count_up, NULL, NULL);
        mp_thread_start(t[i]);
    }
    for (int i = 0; i < 4; i++) {
        int code;
        mp_thread_join(t[i], MP_FOREVER);
        mp_thread_exitcode(t[i], &code);
        printf("  joined %s (returned %d)\n", mp_thread_name(t[i]), code);
        mp_thread_free(t[i]);
    }
    printf("counter = %d: one memory, seen by every thread\n\n", atomic_load(&counter));

    mp_process *p;
    mp_process_new(&p, count_up, NULL, NULL);
    mp_process_start(p);
    mp_process_join(p, MP_FOREVER);
    mp_process_free(p);
    printf("a child process added 1000 too, to its own copy: counter = %d here\n\n",
           atomic_load(&counter));

    mp_thread *s;
    mp_thread_new(&s, sleepy, NULL, &(mp_thread_opts){ .name = "sleepy" });
    mp_thread_start(s);
    printf("with %s running, active_count = %d (it and MainThread)\n", mp_thread_name(s),
           mp_active_count());
    int rc = mp_thread_join(s, 0.05);
    printf("join with a 50 ms timeout: %s\n", mp_errname(rc));
    printf("main returns without joining: exit joins non-daemon threads first\n");
    return 0;
}
