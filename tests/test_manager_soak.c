/* test_manager_soak.c - the manager under a long mixed load: client
 * processes over unix and TCP doing dict, list, queue and lock traffic,
 * killed at random and replaced, for MPROC_SOAK_SECONDS (60 by default,
 * less under sanitizers; `make soak` runs 600). It reports ops/s, p99
 * latency, and each server's RSS and descriptor count at the start and at
 * the end, and checks: descriptors back where they were once the clients
 * are gone, RSS flat within 10% (plus 2 MiB) after the warm-up, no queue
 * item delivered twice, and none lost beyond the delivery guarantee (at
 * most one per killed client, or per bounded get whose reply came after
 * its deadline and margin, which a loaded machine can cause). */
#include "testutil.h"
#include "proc_stats.h"

#include <dirent.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#pragma weak mp_lock_acquire
#pragma weak mp_lock_release
#pragma weak mp_lock_free

enum { WORKERS = 8, MAX_ITEMS = 1 << 24, BUCKETS = 256, KEYS = 1000 };
#define STEP 1.0905077326652577      /* 2^(1/8): eight buckets per doubling */

struct shared {
    _Atomic uint64_t ops, errors, next_id;
    _Atomic uint64_t late;                    /* bounded calls whose reply came too late */
    _Atomic int last_error, last_error_op;    /* for the report */
    _Atomic uint64_t hist[BUCKETS];       /* latency: bucket i holds up to STEP^(i+1) us */
    _Atomic uint8_t put_ok[MAX_ITEMS];
    _Atomic uint8_t seen[MAX_ITEMS];
};

static struct shared *S;
static mp_manager *servers[2];

static void record(double seconds)
{
    double us = seconds * 1e6, edge = STEP;
    int b = 0;
    while (edge < us && b < BUCKETS - 1) {
        edge *= STEP;
        b++;
    }
    atomic_fetch_add(&S->hist[b], 1);
    atomic_fetch_add(&S->ops, 1);
}

static double p99_us(void)
{
    uint64_t total = 0, acc = 0;
    for (int i = 0; i < BUCKETS; i++)
        total += atomic_load(&S->hist[i]);
    double edge = STEP;
    for (int i = 0; i < BUCKETS; i++, edge *= STEP) {
        acc += atomic_load(&S->hist[i]);
        if (acc * 100 >= total * 99)
            return edge;
    }
    return 0;
}

/* One request of a random kind; false on an error no load explains. */
static bool one_op(unsigned *seed, mp_dict *d, mp_list *l, mp_mqueue *q, mp_lock *lk)
{
    char key[16];
    snprintf(key, sizeof key, "k%d", (int)(rand_r(seed) % KEYS));
    mp_buf b = { 0 };
    int rc = 0;
    double t0 = tu_now();
    int op = (int)(rand_r(seed) % 8);
    switch (op) {
    case 0: rc = mp_dict_set(d, key, "value", 5); break;
    case 1: rc = mp_dict_get(d, key, &b); rc = rc == MP_ENOTFOUND ? 0 : rc; break;
    case 2: rc = mp_dict_incr(d, "n", 1, NULL); break;
    case 3: rc = mp_list_append(l, "item", 4); break;
    case 4: rc = mp_list_pop(l, -1, &b); rc = rc == MP_ERANGE ? 0 : rc; break;
    case 5: {
        uint64_t id = atomic_fetch_add(&S->next_id, 1);
        if (id >= MAX_ITEMS)
            break;
        rc = mp_mqueue_put(q, &id, sizeof id, 0.2);
        if (rc == 0)
            atomic_store(&S->put_ok[id], 1);
        rc = rc == MP_EFULL ? 0 : rc;
        break;
    }
    case 6:
        rc = mp_mqueue_get(q, &b, 0.05);
        if (rc == 0 && b.len == sizeof(uint64_t)) {
            uint64_t id;
            memcpy(&id, b.data, sizeof id);
            if (id < MAX_ITEMS)
                atomic_fetch_add(&S->seen[id], 1);
        }
        rc = rc == MP_EEMPTY ? 0 : rc;
        break;
    default:
        if (!lk)
            break;
        rc = mp_lock_acquire(lk, 0.5);
        if (rc == 0 || rc == MP_EOWNERDEAD)
            rc = mp_lock_release(lk);
        rc = rc == MP_ETIMEDOUT ? 0 : rc;
        break;
    }
    record(tu_now() - t0);
    mp_buf_free(&b);
    if (rc == MP_ETIMEDOUT && op >= 5) {      /* a loaded machine: the reply missed the margin */
        atomic_fetch_add(&S->late, 1);
        return true;
    }
    if (rc != 0) {
        atomic_store(&S->last_error, rc);
        atomic_store(&S->last_error_op, op);
    }
    return rc == 0;
}

/* A client process: connects to either server, does a few hundred
 * requests, hangs up, again, until killed. */
static _Noreturn int worker(void *arg)
{
    unsigned seed = (unsigned)getpid() ^ (unsigned)(uintptr_t)arg;
    for (;;) {
        mp_manager *srv = servers[rand_r(&seed) % 2], *m = NULL;
        size_t klen;
        const void *key = mp_manager_authkey(srv, &klen);
        int rc = mp_manager_connect(&m, mp_manager_address(srv), key, klen);
        if (rc != 0) {
            atomic_store(&S->last_error, rc);
            atomic_store(&S->last_error_op, 100);
            atomic_fetch_add(&S->errors, 1);
            usleep(10000);
            continue;
        }
        mp_dict *d = NULL;
        mp_list *l = NULL;
        mp_mqueue *q = NULL;
        mp_lock *lk = NULL;
        if (mp_dict_open(m, "d", &d) != 0 || mp_list_open(m, "l", &l) != 0 ||
            mp_manager_queue(m, "q", 1000, &q) != 0 ||
            (mp_lock_acquire && mp_manager_lock(m, "lock", &lk) != 0)) {
            atomic_store(&S->last_error_op, 101);
            atomic_fetch_add(&S->errors, 1);
        }
        int n = 50 + (int)(rand_r(&seed) % 500);
        for (int i = 0; i < n && d && l && q; i++)
            if (!one_op(&seed, d, l, q, lk))
                atomic_fetch_add(&S->errors, 1);
        if (lk)
            mp_lock_free(lk);
        mp_mqueue_free(q);
        mp_list_free(l);
        mp_dict_free(d);
        mp_manager_free(m);
    }
}

static int fds_idle[2];

static int fds_after[2];

/* No more descriptors than before any client came (fewer is fine: the
 * count at the start may have caught a connection of ours mid-way). */
static bool fds_back(void *arg)
{
    (void)arg;
    bool back = true;
    for (int i = 0; i < 2; i++) {
        fds_after[i] = proc_fd_count(mp_manager_pid(servers[i]));
        back = back && fds_after[i] <= fds_idle[i];
    }
    return back;
}

static void test_soak_mixed_clients_killed_at_random(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)
        skip();
    const char *env = getenv("MPROC_SOAK_SECONDS");
    double seconds = env ? atof(env) : 60.0 / tu_slow();
    if (seconds < 15)
        seconds = 15;
    S = mmap(NULL, sizeof *S, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(S != MAP_FAILED);
    const char *addrs[2] = { NULL, "tcp:127.0.0.1:0" };
    for (int i = 0; i < 2; i++) {
        mp_manager_opts o = { .address = addrs[i] };
        TU_OK(mp_manager_start(&servers[i], &o));
        fds_idle[i] = proc_fd_count(mp_manager_pid(servers[i]));
    }
    pid_t pids[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        pids[i] = tu_fork(worker, (void *)(uintptr_t)i);
    unsigned seed = (unsigned)time(NULL);
    int kills = 0;
    double t0 = tu_now(), warm = t0 + seconds * 0.1;
    bool warmed = false;
    long rss_start[2] = { 0 }, rss_end[2];
    int fds_start[2] = { 0 }, fds_end[2];
    uint64_t ops_warm = 0;
    double warm_at = 0;
    while (tu_now() - t0 < seconds) {
        usleep((useconds_t)(100000 + rand_r(&seed) % 400000));
        int v = (int)(rand_r(&seed) % WORKERS);
        kill(pids[v], SIGKILL);
        assert_int_equal(tu_wait(pids[v], 10), -SIGKILL);    /* it did not die of an error */
        kills++;
        pids[v] = tu_fork(worker, (void *)(uintptr_t)(kills + WORKERS));
        if (!warmed && tu_now() >= warm) {
            warmed = true;
            ops_warm = atomic_load(&S->ops);
            warm_at = tu_now();
            for (int i = 0; i < 2; i++) {
                rss_start[i] = proc_rss_kb(mp_manager_pid(servers[i]));
                fds_start[i] = proc_fd_count(mp_manager_pid(servers[i]));
            }
        }
    }
    uint64_t ops_end = atomic_load(&S->ops);
    double end_at = tu_now();
    for (int i = 0; i < 2; i++) {
        rss_end[i] = proc_rss_kb(mp_manager_pid(servers[i]));
        fds_end[i] = proc_fd_count(mp_manager_pid(servers[i]));
    }
    for (int i = 0; i < WORKERS; i++) {
        kill(pids[i], SIGKILL);
        tu_wait(pids[i], 10);
        kills++;
    }
    bool fds_ok = tu_wait_for(fds_back, NULL, 5 * tu_slow());
    /* what is still queued counts as delivered to us */
    for (int i = 0; i < 2; i++) {
        mp_mqueue *q = NULL;
        TU_OK(mp_manager_queue(servers[i], "q", 1000, &q));
        mp_buf b = { 0 };
        while (mp_mqueue_get(q, &b, 0) == 0) {
            uint64_t id;
            memcpy(&id, b.data, sizeof id);
            atomic_fetch_add(&S->seen[id], 1);
        }
        mp_buf_free(&b);
        mp_mqueue_free(q);
    }
    uint64_t items = atomic_load(&S->next_id), lost = 0, dup = 0, put = 0;
    for (uint64_t i = 0; i < items && i < MAX_ITEMS; i++) {
        put += atomic_load(&S->put_ok[i]);
        lost += atomic_load(&S->put_ok[i]) && !atomic_load(&S->seen[i]);
        dup += atomic_load(&S->seen[i]) > 1;
    }
    double rate = (double)(ops_end - ops_warm) / (end_at - warm_at);
    printf("soak: %.0f s, %d clients killed, %.0f ops/s, p99 %.0f us, unexpected errors %llu"
           " (last: %s in op %d)\n", end_at - t0, kills, rate, p99_us(),
           (unsigned long long)atomic_load(&S->errors), mp_errname(atomic_load(&S->last_error)),
           atomic_load(&S->last_error_op));
    uint64_t allowed = (uint64_t)kills + atomic_load(&S->late);
    printf("soak: queue items put %llu, lost %llu (allowed <= %llu: kills + late replies), "
           "delivered twice %llu\n", (unsigned long long)put, (unsigned long long)lost,
           (unsigned long long)allowed, (unsigned long long)dup);
    for (int i = 0; i < 2; i++)
        printf("soak: %s server: RSS %ld -> %ld KiB, fds %d -> %d (idle %d, after the clients %d)\n",
               i ? "tcp " : "unix", rss_start[i], rss_end[i], fds_start[i], fds_end[i],
               fds_idle[i], fds_after[i]);
    fflush(stdout);
    for (int i = 0; i < 2 && !fds_ok; i++)
        proc_print_fds(mp_manager_pid(servers[i]));
    assert_true(warmed);
    assert_true(fds_ok);
    assert_int_equal(dup, 0);
    assert_true(lost <= allowed);
    assert_int_equal(atomic_load(&S->errors), 0);
    if (tu_slow() <= 1)                 /* sanitizers keep freed memory: RSS says little */
        for (int i = 0; i < 2; i++)
            assert_true(rss_end[i] <= rss_start[i] * 11 / 10 + 2048);
    for (int i = 0; i < 2; i++)
        mp_manager_free(servers[i]);
    munmap(S, sizeof *S);
}

int main(void)
{
    const char *env = getenv("MPROC_SOAK_SECONDS");
    tu_watchdog((unsigned)(env ? atof(env) : 60) + 120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_soak_mixed_clients_killed_at_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
