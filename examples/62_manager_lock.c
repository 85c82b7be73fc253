/* 62_manager_lock.c - a lock kept by the manager: the Python version's locked counter, then a holder killed */
#include <mproc.h>

#include <stdio.h>
#include <time.h>

enum { WORKERS = 10 };

struct shared {
    mp_dict *d;
    mp_lock *lock;
    mp_mqueue *news;
};

static void nap_ms(int ms)
{
    struct timespec ts = { 0, ms * 1000000L };
    nanosleep(&ts, NULL);
}

/* The Python version's f1, with the lock: read, think, write back minus one. */
static int locked_worker(void *arg)
{
    struct shared *s = arg;
    int64_t n;
    if (mp_lock_acquire(s->lock, MP_FOREVER) < 0)
        return 1;
    mp_dict_get_i64(s->d, "num", &n);
    nap_ms(5);
    mp_dict_set_i64(s->d, "num", n - 1);
    mp_lock_release(s->lock);
    return 0;
}

/* Takes the lock, says so, and waits to be killed while holding it. */
static int doomed_holder(void *arg)
{
    struct shared *s = arg;
    if (mp_lock_acquire(s->lock, MP_FOREVER) < 0)
        return 1;
    mp_mqueue_put(s->news, "holding", 7, MP_FOREVER);
    for (;;)
        nap_ms(1000);
}

int main(void)
{
    mp_manager *m;
    struct shared s;
    int rc = mp_manager_start(&m, NULL);
    if (rc == 0)
        rc = mp_dict_open(m, "m_d", &s.d);
    if (rc == 0)
        rc = mp_manager_lock(m, "l2", &s.lock);
    if (rc == 0)
        rc = mp_manager_queue(m, "news", 0, &s.news);
    if (rc != 0) {
        fprintf(stderr, "manager: %s\n", mp_strerror(rc));
        return 1;
    }

    mp_dict_set_i64(s.d, "num", 100);
    mp_process *ps[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        mp_process_new(&ps[i], locked_worker, &s, &(mp_process_opts){ .arg_size = sizeof s });
        mp_process_start(ps[i]);
    }
    for (int i = 0; i < WORKERS; i++) {
        mp_process_join(ps[i], MP_FOREVER);
        mp_process_free(ps[i]);
    }
    int64_t num;
    mp_dict_get_i64(s.d, "num", &num);
    printf("%d processes, each: lock, get num, sleep, set num - 1, unlock.\n", WORKERS);
    printf("num = %lld: %s (the Python version prints 90 too): the\n"
           "  manager's lock makes get+set one step\n\n", (long long)num,
           num == 100 - WORKERS ? "100 - 10, no decrement lost" : "WRONG, decrements were lost");

    mp_process *p;
    mp_process_new(&p, doomed_holder, &s, &(mp_process_opts){ .arg_size = sizeof s });
    mp_process_start(p);
    mp_buf msg = { 0 };
    mp_mqueue_get(s.news, &msg, 10);
    printf("Process %d took the lock; now it is killed (SIGKILL) while holding it.\n",
           (int)mp_process_pid(p));
    mp_process_kill(p);
    mp_process_join(p, MP_FOREVER);
    mp_process_free(p);
    rc = mp_lock_acquire(s.lock, 5);
    printf("The next acquire returns %s: %s.\n", mp_errname(rc), mp_strerror(rc));
    printf("The manager saw the holder's connection drop and released the lock;\n"
           "MP_EOWNERDEAD says we hold it now, but the data it guarded may be half-written.\n");
    mp_lock_release(s.lock);

    mp_buf_free(&msg);
    mp_mqueue_free(s.news);
    mp_lock_free(s.lock);
    mp_dict_free(s.d);
    mp_manager_free(m);
    return num == 100 - WORKERS && rc == MP_EOWNERDEAD ? 0 : 1;
}
