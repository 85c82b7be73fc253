/* process.c - starting and joining a process under each start method
 * (bench/process.py runs the same workloads with Python's multiprocessing).
 *
 * Each repetition starts and joins a child that returns at once, many times
 * over, and reports microseconds per start+join; rows are medians. A raw
 * fork + waitpid loop gives the floor that fork_start_join is measured
 * against (it has no Python peer); the two alternate, repetition by
 * repetition, so that both see the same load.
 */
#include <mproc.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

struct job { mp_start_method method; long n; };

static int returns_at_once(void *arg)
{
    (void)arg;
    return 0;
}

static double start_join_us(void *arg)
{
    const struct job *j = arg;
    mp_process_opts o = { .method = j->method };
    double t0 = bench_now();
    for (long i = 0; i < j->n; i++) {
        mp_process *p;
        int code = -1;
        if (mp_process_new(&p, returns_at_once, NULL, &o) != 0 || mp_process_start(p) != 0 ||
            mp_process_join(p, 30) != 0 || mp_process_exitcode(p, &code) != 0 || code != 0) {
            fprintf(stderr, "bench_process: start+join failed\n");
            return NAN;
        }
        mp_process_free(p);
    }
    return bench_per_op_ns(t0, j->n) / 1000;
}

static double raw_fork_us(void *arg)
{
    const struct job *j = arg;
    double t0 = bench_now();
    for (long i = 0; i < j->n; i++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        int st;
        if (pid < 0 || waitpid(pid, &st, 0) != pid)
            return NAN;
    }
    return bench_per_op_ns(t0, j->n) / 1000;
}

int main(int argc, char **argv)
{
    struct job fork_job = { MP_FORK, 400 };
    struct job spawn_job = { MP_SPAWN, 60 };
    struct job server_job = { MP_FORKSERVER, 200 };
    /* raw and mproc fork alternate, so both see the same load on a shared VM */
    double raw[64], mp[64];
    int reps = bench_reps(7);
    reps = reps > 64 ? 64 : reps;
    if (!bench_selected(argc, argv, "raw_fork_waitpid") && !bench_selected(argc, argv, "fork_start_join"))
        reps = 0;
    for (int i = 0; i < reps; i++) {
        raw[i] = raw_fork_us(&fork_job);
        mp[i] = start_join_us(&fork_job);
    }
    if (reps && bench_selected(argc, argv, "raw_fork_waitpid"))
        bench_row("raw_fork_waitpid", bench_median(raw, reps), "us", BENCH_LOWER);
    if (reps && bench_selected(argc, argv, "fork_start_join"))
        bench_row("fork_start_join", bench_median(mp, reps), "us", BENCH_LOWER);
    if (bench_selected(argc, argv, "spawn_start_join"))
        bench_row("spawn_start_join", bench_median_of(bench_reps(5), start_join_us, &spawn_job),
                  "us", BENCH_LOWER);
    if (bench_selected(argc, argv, "forkserver_start_join"))
        bench_row("forkserver_start_join",
                  bench_median_of(bench_reps(5), start_join_us, &server_job), "us", BENCH_LOWER);
    return 0;
}
