/* 32_queue_full_and_nowait.c - Queue(5): full(), a put that would wait, get_nowait on an empty queue */
/*
 * The Python tutorial's walk-through of a bounded queue in one process: five puts fill a
 * Queue(5); a sixth would wait for room (here with a timeout: MP_EFULL); five
 * gets empty it in FIFO order; get_nowait on the empty queue fails at once
 * with MP_EEMPTY instead of waiting. (full() and qsize() are exact at the
 * moment of the call, but another process may change them right after.)
 */
#include <mproc.h>

#include <stdio.h>

int main(void)
{
    mp_queue *q;
    if (mp_queue_new(&q, &(mp_queue_opts){ .maxsize = 5 }) != 0)
        return 1;
    int values[] = { 111, 222, 333, 444, 555 };
    for (int i = 0; i < 5; i++) {
        mp_queue_put(q, &values[i], sizeof values[i], MP_FOREVER);
        if (i == 1)
            printf("after 2 puts:  full() = %s, qsize() = %zu\n",
                   mp_queue_full(q) ? "true" : "false", mp_queue_qsize(q));
    }
    printf("after 5 puts:  full() = %s, qsize() = %zu\n",
           mp_queue_full(q) ? "true" : "false", mp_queue_qsize(q));

    int extra = 666;
    int rc = mp_queue_put(q, &extra, sizeof extra, 0.2);
    printf("put(666, timeout 0.2 s) on the full queue: %s (%s)\n", mp_errname(rc), mp_strerror(rc));

    for (int i = 0; i < 5; i++) {
        int v;
        size_t len;
        mp_queue_get(q, &v, sizeof v, &len, MP_FOREVER);
        printf("get() -> %d\n", v);
    }
    int v;
    size_t len;
    rc = mp_queue_get_nowait(q, &v, sizeof v, &len);
    printf("get_nowait() on the empty queue: %s (%s)\n", mp_errname(rc), mp_strerror(rc));
    mp_queue_free(q);
    return rc == MP_EEMPTY ? 0 : 1;
}
