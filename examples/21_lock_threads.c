/* 21_lock_threads.c - threads adding to one counter: updates lost without a lock, exact with one */
#include <mproc.h>
#include <sched.h>
#include <stdio.h>

#define THREADS 4
#define ADDS 100000

struct account {
    long balance;
    mp_lock *lock;          /* NULL: no lock */
};

/* balance += 1, spelled out as the machine does it: read, add, write back.
 * Another thread that runs between the read and the write loses its add. */
static int deposit(void *arg)
{
    struct account *a = arg;
    for (int i = 0; i < ADDS; i++) {
        if (a->lock)
            mp_lock_acquire(a->lock, MP_FOREVER);
        long v = *(volatile long *)&a->balance;
        if (i % 1000 == 0)
            sched_yield();          /* let the others in at the worst moment */
        *(volatile long *)&a->balance = v + 1;
        if (a->lock)
            mp_lock_release(a->lock);
    }
    return 0;
}

static long run(struct account *a)
{
    mp_thread *t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        mp_thread_new(&t[i], deposit, a, NULL);
        mp_thread_start(t[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        mp_thread_join(t[i], MP_FOREVER);
        mp_thread_free(t[i]);
    }
    return a->balance;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    printf("%d threads each deposit 1, %d times, into one balance.\n", THREADS, ADDS);
    struct account a = { 0, NULL };
    long got = run(&a);
    printf("without a lock: balance %ld of %d (%ld deposits lost)\n",
           got, THREADS * ADDS, (long)THREADS * ADDS - got);

    struct account b = { 0, NULL };
    mp_lock_new(&b.lock);
    got = run(&b);
    printf("with an mp_lock:  balance %ld of %d: exact\n", got, THREADS * ADDS);
    printf("(the same mp_lock works between processes too: see 20_lock_tickets)\n");
    mp_lock_free(b.lock);
    return got == THREADS * ADDS ? 0 : 1;
}
