/* manager.c - manager calls: dict set/get from one client, and atomic
 * incr from 8 and from 64 client processes at once (aggregate ops/s; total
 * checked). manager_roundtrip_floor is what no call can beat on this machine
 * at this moment: two processes handing a counter back and forth in shared
 * memory, one cache line each way, both spinning; run beside the dict rows,
 * since where the host places the two virtual CPUs moves it severalfold.
 * manager_dict_set/get run in the family that started the manager, which
 * works on the dicts in the arena directly (no round trip);
 * manager_dict_set_remote/get_remote run the same calls on a connection
 * made by address (through the server: the shared-memory channel here, the
 * socket for another family), the figure a remote client sees.
 * Python's peer (manager.py) uses Manager().dict() and, for incr, a manager
 * Lock around get+set, as Python code has to. */
#include "bench.h"

#include <mproc.h>

#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

enum { OPS = 40000, MAX_CLIENTS = 64 };

/* A crowd of client processes, each doing ops incrs. */
struct crowd { int clients, ops; };
static const struct crowd crowd8 = { 8, 4000 }, crowd64 = { 64, 250 };

static mp_manager *manager, *remote;
static mp_dict *dict, *remote_dict;

static double rep_set(void *arg)
{
    mp_dict *d = arg;
    char val[8] = "12345678";
    double t0 = bench_now();
    for (long i = 0; i < OPS; i++)
        if (mp_dict_set(d, "key", val, sizeof val) != 0)
            return NAN;
    return bench_rate(t0, OPS);
}

static double rep_get(void *arg)
{
    mp_dict *d = arg;
    mp_buf b = { 0 };
    double t0 = bench_now();
    for (long i = 0; i < OPS; i++)
        if (mp_dict_get(d, "key", &b) != 0)
            return NAN;
    double r = bench_rate(t0, OPS);
    mp_buf_free(&b);
    return r;
}

/* Round trips through two cache lines between this process and a child. */
static double rep_floor(void *arg)
{
    struct line { _Alignas(64) _Atomic uint32_t v; };
    struct line *w = mmap(NULL, 2 * sizeof *w, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                          -1, 0);
    if (w == MAP_FAILED)
        return NAN;
    atomic_store(&w[0].v, 0);
    atomic_store(&w[1].v, 0);
    pid_t pid = fork();
    if (pid == 0) {
        for (uint32_t i = 1; i <= OPS; i++) {
            while (atomic_load_explicit(&w[0].v, memory_order_acquire) != i)
                bench_pause();
            atomic_store_explicit(&w[1].v, i, memory_order_release);
        }
        _exit(0);
    }
    double t0 = bench_now();
    for (uint32_t i = 1; pid > 0 && i <= OPS; i++) {
        atomic_store_explicit(&w[0].v, i, memory_order_release);
        while (atomic_load_explicit(&w[1].v, memory_order_acquire) != i)
            bench_pause();
    }
    double r = bench_rate(t0, OPS);
    int st = 0;
    bool ok = pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    munmap(w, 2 * sizeof *w);
    return ok ? r : NAN;
}

/* A client process: connect, say so, wait for the start byte, incr. */
static int incr_client(int ready, int go, int ops)
{
    size_t klen;
    const void *key = mp_manager_authkey(manager, &klen);
    mp_manager *m;
    mp_dict *d;
    char c;
    if (mp_manager_connect(&m, mp_manager_address(manager), key, klen) != 0 ||
        mp_dict_open(m, "bench", &d) != 0 || write(ready, "r", 1) != 1 || read(go, &c, 1) != 1)
        return 1;
    for (int i = 0; i < ops; i++)
        if (mp_dict_incr(d, "n", 1, NULL) != 0)
            return 1;
    return 0;
}

static double rep_incr(void *arg)
{
    const struct crowd *cr = arg;
    int go[2], ready[2];
    pid_t pids[MAX_CLIENTS];
    if (pipe(go) < 0 || pipe(ready) < 0 || mp_dict_set_i64(dict, "n", 0) != 0)
        return NAN;
    for (int i = 0; i < cr->clients; i++)
        if ((pids[i] = fork()) == 0)
            _exit(incr_client(ready[1], go[0], cr->ops));
    char start[MAX_CLIENTS] = { 0 };
    bool ok = true;
    for (int i = 0; ok && i < cr->clients; i++)     /* all connected */
        ok = read(ready[0], start, 1) == 1;
    double t0 = bench_now();
    ok = ok && write(go[1], start, (size_t)cr->clients) == cr->clients;
    for (int i = 0; i < cr->clients; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        ok = ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    double r = bench_rate(t0, (double)cr->clients * cr->ops);
    close(go[0]);
    close(go[1]);
    close(ready[0]);
    close(ready[1]);
    int64_t n = 0;
    mp_dict_get_i64(dict, "n", &n);
    if (!ok || n != (int64_t)cr->clients * cr->ops) {
        fprintf(stderr, "incr: total %lld, want %d\n", (long long)n, cr->clients * cr->ops);
        return NAN;
    }
    return r;
}

int main(int argc, char **argv)
{
    size_t klen = 0;
    const void *key = NULL;
    if (mp_manager_start(&manager, NULL) != 0 || mp_dict_open(manager, "bench", &dict) != 0 ||
        mp_dict_set(dict, "key", "12345678", 8) != 0 ||      /* manager_dict_get alone reads it */
        !(key = mp_manager_authkey(manager, &klen)) ||
        mp_manager_connect(&remote, mp_manager_address(manager), key, klen) != 0 ||
        mp_dict_open(remote, "bench", &remote_dict) != 0) {
        fprintf(stderr, "cannot start a manager\n");
        return 1;
    }
    if (bench_selected(argc, argv, "manager_roundtrip_floor"))
        bench_row("manager_roundtrip_floor", bench_median_of(bench_reps(5), rep_floor, NULL), "ops/s",
                  BENCH_HIGHER);
    if (bench_selected(argc, argv, "manager_dict_set"))
        bench_row("manager_dict_set", bench_median_of(bench_reps(5), rep_set, dict), "ops/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "manager_dict_get"))
        bench_row("manager_dict_get", bench_median_of(bench_reps(5), rep_get, dict), "ops/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "manager_dict_set_remote"))
        bench_row("manager_dict_set_remote", bench_median_of(bench_reps(5), rep_set, remote_dict), "ops/s",
                  BENCH_HIGHER);
    if (bench_selected(argc, argv, "manager_dict_get_remote"))
        bench_row("manager_dict_get_remote", bench_median_of(bench_reps(5), rep_get, remote_dict), "ops/s",
                  BENCH_HIGHER);
    if (bench_selected(argc, argv, "manager_incr_8clients"))
        bench_row("manager_incr_8clients", bench_median_of(bench_reps(3), rep_incr, (void *)&crowd8),
                  "ops/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "manager_incr_64clients"))
        bench_row("manager_incr_64clients", bench_median_of(bench_reps(3), rep_incr, (void *)&crowd64),
                  "ops/s", BENCH_HIGHER);
    mp_dict_free(remote_dict);
    mp_manager_free(remote);
    mp_dict_free(dict);
    mp_manager_free(manager);
    return 0;
}
