/* 60_manager_counter.c - a manager dict as a shared counter: the racy way and mp_dict_incr */
#include <mproc.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

enum { WORKERS = 10, STEPS = 10 };

static void nap_ms(int ms)
{
    struct timespec ts = { 0, ms * 1000000L };
    nanosleep(&ts, NULL);
}

/* The Python version's f1: read the number, think a little, write it back minus one.
 * Between the read and the write another process can do the same, and one
 * of the two decrements is lost. */
static int racy_worker(void *arg)
{
    mp_dict *d = arg;
    for (int i = 0; i < STEPS; i++) {
        int64_t n;
        if (mp_dict_get_i64(d, "num", &n) != 0)
            return 1;
        nap_ms(2);
        if (mp_dict_set_i64(d, "num", n - 1) != 0)
            return 1;
    }
    return 0;
}

/* The server does the read-modify-write itself: no window, no lock. */
static int incr_worker(void *arg)
{
    mp_dict *d = arg;
    for (int i = 0; i < STEPS; i++) {
        if (mp_dict_incr(d, "num", -1, NULL) != 0)
            return 1;
        nap_ms(2);
    }
    return 0;
}

/* Ten processes, each given the dict handle: in each child the handle
 * opens its own connection to the server on first use. */
static int64_t run(mp_dict *d, mp_target worker)
{
    mp_dict_set_i64(d, "num", 100);
    mp_process *ps[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        if (mp_process_new(&ps[i], worker, d, NULL) != 0 || mp_process_start(ps[i]) != 0)
            return -1;
    for (int i = 0; i < WORKERS; i++) {
        mp_process_join(ps[i], MP_FOREVER);
        mp_process_free(ps[i]);
    }
    int64_t n = -1;
    mp_dict_get_i64(d, "num", &n);
    return n;
}

int main(void)
{
    mp_manager *m;
    mp_dict *d;
    int rc = mp_manager_start(&m, NULL);
    if (rc == 0)
        rc = mp_dict_open(m, "m_d", &d);
    if (rc != 0) {
        fprintf(stderr, "manager: %s\n", mp_strerror(rc));
        return 1;
    }
    printf("A manager server runs as process %d at %s.\n", (int)mp_manager_pid(m), mp_manager_address(m));
    printf("num starts at 100; %d processes each take 1 away %d times: 0 is the right answer.\n\n",
           WORKERS, STEPS);

    int64_t racy = run(d, racy_worker);
    printf("get, then set (the Python version's way, no lock): num = %lld\n", (long long)racy);
    printf("  %s\n\n", racy == 0 ? "lucky this time: the window between get and set is still there"
                                 : "decrements were lost: two processes read the same value");

    int64_t exact = run(d, incr_worker);
    printf("mp_dict_incr(d, \"num\", -1):           num = %lld\n", (long long)exact);
    printf("  the server adds atomically, so no lock is needed and nothing is lost\n");

    mp_dict_free(d);
    mp_manager_free(m);     /* stops the server */
    return exact == 0 ? 0 : 1;
}
