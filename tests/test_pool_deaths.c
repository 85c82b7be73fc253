/* test_pool_deaths.c - the pool against deaths it did not cause: its fork
 * server killed, workers killed from outside (before they are ready too),
 * kill storms under every start method; and the initializer failures that
 * do break it. */
#include "pool_tasks.h"

#include <pthread.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/wait.h>

static const mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
static const char *const method_names[] = { "fork", "spawn", "forkserver" };


static pid_t worker_pid(mp_pool *p)
{
    mp_buf b = { 0 };
    pid_t pid = 0;
    if (mp_pool_apply(p, t_pid, NULL, 0, &b) == 0 && b.len == sizeof pid)
        memcpy(&pid, b.data, sizeof pid);
    mp_buf_free(&b);
    return pid;
}

static double cpu_seconds(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 +
           (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec / 1e6;
}

/* ------------------------------------------------------------------ the fork server */

static void test_pool_goes_on_when_its_fork_server_is_killed(void **state)
{
    (void)state;
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .method = MP_FORKSERVER }));
    for (int round = 0; round < 2; round++) {      /* the new server too */
        _Atomic int *flag = shared_flag();
        mp_future *busy = submit_wait(p, flag);
        assert_true(tu_wait_for(started, (void *)flag, 30 * tu_slow()));
        pid_t w = worker_pid(p);                   /* the other worker */
        assert_true(w > 0);
        pid_t server = tu_proc_ppid(w);
        assert_true(server > 0 && server != getpid());
        TU_OK(kill(server, SIGKILL));
        /* Its workers are daemons: they die with it, and so does the task. */
        TU_ASSERT_RC(mp_future_result(busy, NULL, 30 * tu_slow()), MP_ECRASHED);
        mp_future_free(busy);
        expect_squares(p, 0, 32);                  /* every later task completes */
        assert_true(tu_proc_ppid(worker_pid(p)) != server);
        mp_shared_free(flag);
    }
    double before = cpu_seconds();
    usleep(500000);
    assert_true(cpu_seconds() - before < 0.2);     /* an idle pool: no spinning monitor */
    TU_OK(mp_pool_terminate(p));
    mp_pool_free(p);
}


/* ------------------------------------------------------------------ outside kills */

/* Each worker's initializer says who it is, then waits for go. */
struct gate { _Atomic int go, n; _Atomic pid_t pids[64]; };

static void init_waits(void *arg)
{
    struct gate *g;
    memcpy(&g, arg, sizeof g);
    int i = atomic_fetch_add(&g->n, 1);
    if (i < 64)
        atomic_store(&g->pids[i], getpid());
    for (int t = 0; t < 60000 && !atomic_load(&g->go); t++)
        usleep(1000);
}

struct gate_wait { struct gate *g; int n; };

static bool gate_reached(void *arg)
{
    struct gate_wait *w = arg;
    return atomic_load(&w->g->n) >= w->n && atomic_load(&w->g->pids[w->n - 1]) != 0;
}

/* An OOM killer that picks the newest process kills workers before they
 * are ready, again and again: the pool replaces them and goes on. */
static void test_pool_outside_kills_before_ready_do_not_break_it(void **state)
{
    (void)state;
    for (int m = 0; m < 3; m++) {
        struct gate *g = mp_shared_alloc(sizeof *g);
        mp_pool *p;
        TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 1, .method = methods[m],
                                                .initializer = init_waits, .initarg = &g,
                                                .initarg_size = sizeof g }));
        mp_future *f = submit_int(p, t_square, 5);
        for (int k = 1; k <= 6; k++) {           /* twice what breaks a pool */
            struct gate_wait w = { g, k };
            assert_true(tu_wait_for(gate_reached, &w, 30));
            TU_OK(kill(atomic_load(&g->pids[k - 1]), k % 2 ? SIGKILL : SIGTERM));
        }
        struct gate_wait w = { g, 7 };
        assert_true(tu_wait_for(gate_reached, &w, 30));
        atomic_store(&g->go, 1);
        int v = 0;
        TU_OK(result_int(f, &v));                /* queued all along: runs now */
        assert_int_equal(v, 25);
        mp_future_free(f);
        expect_squares(p, 0, 16);
        TU_OK(mp_pool_close(p));
        TU_OK(mp_pool_join(p, 30 * tu_slow()));
        mp_pool_free(p);
        mp_shared_free(g);
    }
}

/* ------------------------------------------------------------------ kill storms */

struct scan {                       /* the killer thread's alone */
    pid_t me, servers[8], pids[8192], ppids[8192];
    size_t nservers, n;
};

static void scan_one(pid_t pid, char st, int ppid, const char *stat, void *ctx)
{
    struct scan *s = ctx;
    if (st == 'Z')
        return;
    if (strstr(stat, "(mp-forkserver)") && ppid == s->me) {
        if (s->nservers < 8)
            s->servers[s->nservers++] = pid;
    } else if (s->n < 8192) {
        s->pids[s->n] = pid;
        s->ppids[s->n++] = ppid;
    }
}

/* The pool's workers: our children, and the fork server's (not itself). */
static size_t pool_workers(pid_t *out, size_t cap)
{
    static struct scan s;
    s.me = getpid();
    s.nservers = s.n = 0;
    each_process(scan_one, &s);
    size_t k = 0;
    for (size_t i = 0; i < s.n && k < cap; i++) {
        bool keep = s.ppids[i] == s.me;
        for (size_t j = 0; j < s.nservers && !keep; j++)
            keep = s.ppids[i] == s.servers[j];
        if (keep)
            out[k++] = s.pids[i];
    }
    return k;
}

/* A square that takes a moment, so kills meet tasks running. */
static int t_square_slowly(const void *in, size_t len, mp_buf *out)
{
    usleep(300);
    return t_square(in, len, out);
}

struct storm { int kills, done; unsigned seed; double end; _Atomic int stop; };

static void *killer(void *arg)
{
    struct storm *s = arg;
    unsigned r = s->seed;
    while (s->done < s->kills && !atomic_load(&s->stop) && tu_now() < s->end) {
        pid_t pids[64];
        size_t n = pool_workers(pids, 64);
        if (n == 0) {
            usleep(500);
            continue;
        }
        pid_t victim = pids[rand_r(&r) % n];
        if (kill(victim, rand_r(&r) % 4 ? SIGKILL : SIGTERM) == 0)
            s->done++;
        usleep((useconds_t)(rand_r(&r) % 4000));   /* some die before ready */
    }
    return NULL;
}

static void check_crash(int rc, int code)
{
    TU_ASSERT_RC(rc, MP_ECRASHED);
    assert_true(code == SIGKILL || code == SIGTERM || code == 0);
}

/* One round of work; with fail_ok, an item may end MP_ECRASHED, nothing else. */
static void storm_round(mp_pool *p, bool fail_ok, int *crashed)
{
    enum { N = 40 };
    mp_future *fs[N];
    for (int i = 0; i < N; i++)
        fs[i] = submit_int(p, t_square_slowly, i);
    int in[100], out[100];
    for (int i = 0; i < 100; i++)
        in[i] = i;
    mp_future *map;
    TU_OK(mp_pool_map_async(p, t_square_slowly, in, 100, sizeof *in, out, sizeof *out, 3, &map));
    mp_iter *it;
    TU_OK(mp_pool_imap(p, t_square_slowly, in, 100, sizeof *in, 4, true, &it));
    for (int i = 0; i < N; i++) {
        int v = -1;
        mp_buf b = { 0 };
        int rc = mp_future_result(fs[i], &b, 120 * tu_slow());   /* the storm may outlast it */
        if (rc == 0 && b.len == sizeof v)
            memcpy(&v, b.data, sizeof v);
        mp_buf_free(&b);
        if (rc == 0)
            assert_int_equal(v, i * i);
        else if (fail_ok)
            check_crash(rc, mp_future_code(fs[i])), ++*crashed;
        else
            TU_OK(rc);
        mp_future_free(fs[i]);
    }
    int rc = mp_future_result(map, NULL, 120 * tu_slow());
    if (rc != 0 && fail_ok) {
        check_crash(rc, mp_future_code(map));
        ++*crashed;
    } else {
        TU_OK(rc);
        for (int i = 0; i < 100; i++)
            assert_int_equal(out[i], i * i);
    }
    mp_future_free(map);
    bool seen[100] = { false };
    size_t index;
    mp_buf b = { 0 };
    int got = 0;
    while ((rc = mp_iter_next(it, &index, &b, 120 * tu_slow())) != MP_EEOF) {
        assert_true(index < 100 && !seen[index]);
        seen[index] = true;
        got++;
        if (rc == 0) {
            int v;
            assert_int_equal(b.len, sizeof v);
            memcpy(&v, b.data, sizeof v);
            assert_int_equal(v, (int)(index * index));
        } else if (fail_ok) {
            check_crash(rc, mp_iter_code(it));
            ++*crashed;
        } else {
            TU_OK(rc);
        }
    }
    assert_int_equal(got, 100);                      /* nothing lost, nothing twice */
    mp_buf_free(&b);
    mp_iter_free(it);
}

/* Kills this process's fork servers, each as soon as it is seen: every
 * child of ours (a forkserver pool's workers are the server's children),
 * also one that has not named itself mp-forkserver yet. */
static void *server_killer(void *arg)
{
    struct storm *s = arg;
    static struct scan sc;
    while (!atomic_load(&s->stop) && tu_now() < s->end) {
        sc.me = getpid();
        sc.nservers = sc.n = 0;
        each_process(scan_one, &sc);
        for (size_t i = 0; i < sc.nservers; i++)
            s->done += kill(sc.servers[i], SIGKILL) == 0;
        for (size_t i = 0; i < sc.n; i++)
            if (sc.ppids[i] == sc.me)
                s->done += kill(sc.pids[i], SIGKILL) == 0;
        usleep(2000);
    }
    return NULL;
}

/* The fork server killed from outside again and again, each new one as
 * soon as it is up: every start in flight fails with it. That is an
 * outside death, not the pool's own failure to start workers: once the
 * kills stop, the pool serves (8 such starts in a row broke it for good). */
static void test_pool_survives_its_fork_server_killed_again_and_again(void **state)
{
    (void)state;
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .method = MP_FORKSERVER }));
    expect_squares(p, 0, 4);
    struct storm s = { .end = tu_now() + 2 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, server_killer, &s), 0);
    mp_future *fs[20];
    for (int i = 0; i < 20; i++) {                   /* work during the storm */
        fs[i] = NULL;
        int x = i;
        int rc = mp_pool_apply_async(p, t_square_slowly, &x, sizeof x, &fs[i]);
        if (rc != 0)                                 /* the old failure: broken for good */
            TU_OK(rc);
        usleep(100 * 1000);
    }
    pthread_join(t, NULL);
    print_message("%d fork servers killed\n", s.done);
    assert_true(s.done >= 8);
    for (int i = 0; i < 20; i++) {
        int rc = mp_future_result(fs[i], NULL, 60 * tu_slow());
        if (rc != 0)
            check_crash(rc, mp_future_code(fs[i]));
        mp_future_free(fs[i]);
    }
    expect_squares(p, 0, 16);                        /* every later task completes */
    TU_OK(mp_pool_terminate(p));
    mp_pool_free(p);

    /* Pools made during such a storm: a first worker's start that fails
     * with the server is an outside death too, replaced later, not a
     * failed mp_pool_new (139 of 300 failed with ECONNRESET). */
    s = (struct storm){ .end = tu_now() + 2 };
    assert_int_equal(pthread_create(&t, NULL, server_killer, &s), 0);
    mp_pool *made[10];
    for (int i = 0; i < 10; i++) {
        TU_OK(mp_pool_new(&made[i], &(mp_pool_opts){ .processes = 2, .method = MP_FORKSERVER }));
        usleep(100 * 1000);
    }
    pthread_join(t, NULL);
    print_message("%d fork servers killed\n", s.done);
    for (int i = 0; i < 10; i++) {
        expect_squares(made[i], 0, 4);               /* each serves once the kills stop */
        TU_OK(mp_pool_terminate(made[i]));
        mp_pool_free(made[i]);
    }
}

/* Workers killed at random, before ready too, by SIGKILL and SIGTERM:
 * every task gets its result or MP_ECRASHED, and the pool goes on.
 * MPROC_STORM_SEED repeats a run. */
static void test_pool_survives_a_kill_storm_under_every_method(void **state)
{
    (void)state;
    const char *env = getenv("MPROC_STORM_SEED");
    unsigned seed = env ? (unsigned)strtoul(env, NULL, 0) : (unsigned)time(NULL);
    int kills = tu_slow() > 1 ? 300 : 40;
    double budget = tu_slow() > 1 ? 40 : 30;      /* seconds per method, at most */
    if (RUNNING_ON_VALGRIND)
        kills = 10;
    for (int m = 0; m < 3; m++) {
        print_message("kill storm: %s, %d kills, seed %u\n", method_names[m], kills, seed);
        mp_pool *p;
        TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 3, .method = methods[m] }));
        struct storm s = { kills, 0, seed + (unsigned)m, tu_now() + budget, 0 };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, killer, &s), 0);
        int crashed = 0, rounds = 0;
        while (s.done < s.kills && tu_now() < s.end) {
            storm_round(p, true, &crashed);
            rounds++;
        }
        atomic_store(&s.stop, 1);
        pthread_join(t, NULL);
        assert_true(s.done >= 40 || s.done == kills);  /* a slow machine stops early */
        storm_round(p, false, &crashed);            /* the storm is over: all succeed */
        print_message("  %d kills, %d rounds, %d failed with MP_ECRASHED\n", s.done, rounds,
                      crashed);
        TU_OK(mp_pool_close(p));
        TU_OK(mp_pool_join(p, 60 * tu_slow()));
        mp_pool_free(p);
    }
}

/* ------------------------------------------------------------------ descriptor limit */

static int ret_zero(void *arg)
{
    (void)arg;
    return 0;
}

/* At the descriptor limit the real cause comes back: -EMFILE, not
 * MP_ENOMEM. Exit code: 0, or 10 + 10 * method + which call failed. */
static int starts_at_emfile(void *arg)
{
    (void)arg;
    mp_process *warm;                 /* the arena and this process's record exist */
    if (mp_process_new(&warm, ret_zero, NULL, NULL) != 0)
        return 1;
    if (!tu_exhaust_fds())
        return 2;
    for (int m = 0; m < 3; m++) {
        mp_pool *p = NULL;
        int rc = mp_pool_new(&p, &(mp_pool_opts){ .processes = 1, .method = methods[m] });
        if (rc != -EMFILE) {
            fprintf(stderr, "%s: mp_pool_new %d\n", method_names[m], rc);
            return 10 + 10 * m + 1;
        }
        mp_process *c;
        if (mp_process_new(&c, ret_zero, NULL, &(mp_process_opts){ .method = methods[m] }) != 0)
            return 10 + 10 * m + 2;
        rc = mp_process_start(c);
        if (rc != -EMFILE) {
            fprintf(stderr, "%s: mp_process_start %d\n", method_names[m], rc);
            return 10 + 10 * m + 3;
        }
        if (mp_process_free(c) != 0)
            return 10 + 10 * m + 4;
    }
    return 0;
}

static void test_descriptor_limit_gives_emfile_under_every_method(void **state)
{
    (void)state;
    assert_int_equal(tu_wait(tu_fork(starts_at_emfile, NULL), 60), 0);
}

static rlim_t set_nofile(rlim_t n)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = n;
    setrlimit(RLIMIT_NOFILE, &rl);
    return was;
}

static bool squares_to(mp_future *f, int x)
{
    mp_buf b = { 0 };
    int y = -1;
    bool ok = mp_future_result(f, &b, 30) == 0 && b.len == sizeof y;
    if (ok)
        memcpy(&y, b.data, sizeof y);
    mp_buf_free(&b);
    mp_future_free(f);
    return ok && y == x * x;
}

/* Out of descriptors for a moment, a pool whose workers each run one task
 * cannot start their replacements: it tries again until the shortage
 * passes, and then runs every task. A shortage that lasts breaks it,
 * saying why, and its close and join still return. Exit code: 0, or
 * 10 * method + which step failed. */
static int rides_out_a_shortage(void *arg)
{
    (void)arg;
    for (int m = 0; m < 3; m++) {
        mp_pool *p;
        mp_future *f[6];
        if (mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .maxtasksperchild = 1,
                                             .method = methods[m] }) != 0)
            return 10 * m + 1;
        rlim_t was = set_nofile(3);
        for (int i = 0; i < 6; i++)
            if (mp_pool_apply_async(p, t_square, &i, sizeof i, &f[i]) != 0)
                return 10 * m + 2;
        usleep(300 * 1000);
        set_nofile(was);
        for (int i = 0; i < 6; i++)
            if (!squares_to(f[i], i))
                return 10 * m + 3;
        if (mp_pool_close(p) != 0 || mp_pool_join(p, 30) != 0)
            return 10 * m + 4;
        mp_pool_free(p);
    }
    mp_pool *p;
    mp_future *a, *f;
    int x = 3;
    _Atomic int *flag = mp_shared_alloc(2 * sizeof *flag);
    if (!flag || mp_pool_new(&p, &(mp_pool_opts){ .processes = 1, .maxtasksperchild = 1 }) != 0 ||
        mp_pool_apply_async(p, t_wait_flag, &flag, sizeof flag, &a) != 0)
        return 41;
    for (int i = 0; i < 30000 && !atomic_load(&flag[1]); i++)
        usleep(1000);                   /* a runs: its worker is the pool's only one */
    rlim_t was = set_nofile(3);         /* for good: that worker, once a is done, is not replaced */
    if (mp_pool_apply_async(p, t_square, &x, sizeof x, &f) != 0)
        return 42;
    atomic_store(flag, 1);
    if (mp_future_result(a, NULL, 30) != 0)
        return 46;
    mp_future_free(a);
    int rc = mp_future_result(f, NULL, 60);
    mp_future_free(f);
    set_nofile(was);
    if (rc != MP_EBROKEN)
        return 43;
    if (mp_pool_apply_async(p, t_square, &x, sizeof x, &f) != MP_EBROKEN ||
        !strstr(mp_last_error(), "no worker could be started"))
        return 44;
    if (mp_pool_close(p) != 0 || mp_pool_join(p, 5) != 0)
        return 45;
    mp_pool_free(p);
    return 0;
}

static void test_pool_rides_out_a_descriptor_shortage_and_breaks_on_a_lasting_one(void **state)
{
    (void)state;
    assert_int_equal(tu_wait(tu_fork(rides_out_a_shortage, NULL), 120), 0);
}

int main(void)
{
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_goes_on_when_its_fork_server_is_killed),
        cmocka_unit_test(test_pool_survives_its_fork_server_killed_again_and_again),
        cmocka_unit_test(test_pool_outside_kills_before_ready_do_not_break_it),
        cmocka_unit_test(test_pool_survives_a_kill_storm_under_every_method),
        cmocka_unit_test(test_descriptor_limit_gives_emfile_under_every_method),
        cmocka_unit_test(test_pool_rides_out_a_descriptor_shortage_and_breaks_on_a_lasting_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
