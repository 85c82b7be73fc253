/* 36_queue_threads_and_processes.c - one queue, fed by threads of this process and read by other processes */
/*
 * Python has queue.Queue for threads and multiprocessing.Queue for processes.
 * mproc's queue is one type for both, and mixes them: here three threads of
 * the main process produce, and two worker processes consume. Every item is
 * tagged with its producer; the workers report what they got through shared
 * memory, and the main process checks that every item arrived exactly once.
 */
#include <mproc.h>

#include <stdint.h>
#include <stdio.h>

enum { THREADS = 3, WORKERS = 2, PER_THREAD = 20000 };

struct shop {
    mp_queue *q;
    uint64_t got[WORKERS], sum[WORKERS];
};

struct producer { struct shop *shop; uint64_t first; };
struct worker { struct shop *shop; int id; };

static int produce(void *arg)                       /* a thread */
{
    struct producer *p = arg;
    for (uint64_t x = p->first; x < p->first + PER_THREAD; x++)
        mp_queue_put(p->shop->q, &x, sizeof x, MP_FOREVER);
    return 0;
}

static int consume(void *arg)                       /* a process */
{
    struct worker *w = arg;
    uint64_t x;
    size_t len;
    while (mp_queue_get(w->shop->q, &x, sizeof x, &len, MP_FOREVER) == 0) {
        w->shop->got[w->id]++;
        w->shop->sum[w->id] += x;
    }
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct shop *shop = mp_shared_alloc(sizeof *shop);   /* the workers write here */
    mp_queue_new(&shop->q, NULL);
    struct worker w[WORKERS];
    mp_process *procs[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        w[i] = (struct worker){ shop, i };
        mp_process_new(&procs[i], consume, &w[i], NULL);
        mp_process_start(procs[i]);
    }
    struct producer p[THREADS];
    mp_thread *threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        p[i] = (struct producer){ shop, 1 + (uint64_t)i * PER_THREAD };
        mp_thread_new(&threads[i], produce, &p[i], NULL);
        mp_thread_start(threads[i]);
    }
    printf("%d threads put %d numbers each; %d worker processes take them.\n",
           THREADS, PER_THREAD, WORKERS);
    for (int i = 0; i < THREADS; i++) {
        mp_thread_join(threads[i], MP_FOREVER);
        mp_thread_free(threads[i]);
    }
    mp_queue_shutdown(shop->q);                      /* workers drain, then see MP_EEOF */
    uint64_t got = 0, sum = 0, n = (uint64_t)THREADS * PER_THREAD;
    for (int i = 0; i < WORKERS; i++) {
        mp_process_join(procs[i], MP_FOREVER);
        mp_process_free(procs[i]);
        printf("  worker %d got %llu numbers\n", i, (unsigned long long)shop->got[i]);
        got += shop->got[i];
        sum += shop->sum[i];
    }
    printf("  (how the items split between the workers depends on which one is awake\n"
           "  when an item comes: one quick worker may take nearly all, even all, and\n"
           "  a worker that got 0 did nothing wrong; what matters is the total)\n");
    bool ok = got == n && sum == n * (n + 1) / 2;
    printf("%llu numbers arrived, summing to %llu: %s\n", (unsigned long long)got,
           (unsigned long long)sum, ok ? "each exactly once" : "WRONG");
    mp_queue_free(shop->q);
    mp_shared_free(shop);
    return ok ? 0 : 1;
}
