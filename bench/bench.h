/* bench.h - what every bench/<area>.c shares: a clock, medians, the row format.
 *
 * A bench program prints one line per workload on stdout and nothing else:
 *     <workload-id> TAB <value> TAB <unit> TAB <higher|lower>
 * where value is the median of several repetitions. bench/run.sh pairs these
 * rows with the ones bench/<area>.py prints (same ids, Python's
 * multiprocessing) and reports how many times better mproc is. Progress and
 * diagnostics go to stderr. Header-only: static functions, no library.
 *
 * The programs under bench/peers/ measure other libraries (ZeroMQ, Boost,
 * socketpair, glibc's mutex) on mproc's own workload ids and add a fifth
 * field, the contender's name (bench_peer_row):
 *     <workload-id> TAB <value> TAB <unit> TAB <higher|lower> TAB <peer>
 *
 *     static double one_rep(void *arg)            // one repetition -> value
 *     {
 *         long n = 100000;
 *         double t0 = bench_now();
 *         for (long i = 0; i < n; i++) work(arg);
 *         return bench_per_op_ns(t0, n);          // ns per op
 *     }
 *     ...
 *     if (bench_selected(argc, argv, "lock_uncontended"))
 *         bench_row("lock_uncontended", bench_median_of(bench_reps(5), one_rep, l),
 *                   "ns", BENCH_LOWER);
 *
 * Environment: BENCH_REPS overrides every repetition count (e.g. 1 for a
 * quick smoke run). Command-line arguments, if any, select workloads by
 * substring of their id (bench_selected).
 */
#ifndef MPROC_BENCH_H
#define MPROC_BENCH_H

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#define BENCH_HIGHER true    /* throughput: items/s, MB/s, ops/s */
#define BENCH_LOWER false    /* latency: ns, us, ms, s */

/* CLOCK_MONOTONIC in seconds. */
static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Nanoseconds per operation since t0 (from bench_now) for n operations. */
static inline double bench_per_op_ns(double t0, long n)
{
    return n > 0 ? (bench_now() - t0) * 1e9 / (double)n : NAN;
}

/* One pause in a spin loop: tells the CPU (and a hyperthread sibling) that
 * this loop only waits. */
static inline void bench_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Operations per second since t0 for n operations. */
static inline double bench_rate(double t0, double n)
{
    double dt = bench_now() - t0;
    return dt > 0 ? n / dt : NAN;
}

/* Repetition count: BENCH_REPS if set (>= 1), else def. */
static inline int bench_reps(int def)
{
    const char *s = getenv("BENCH_REPS");
    int n = s ? atoi(s) : 0;
    return n >= 1 ? n : def;
}

static inline int bench_cmp_double_(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v in place); NaN entries (failed repetitions) are
 * ignored; NaN if none is left. */
static inline double bench_median(double *v, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(v[i]))
            v[k++] = v[i];
    if (k == 0)
        return NAN;
    qsort(v, (size_t)k, sizeof *v, bench_cmp_double_);
    return k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
}

/* Runs rep(arg) reps times (at most 64) and returns the median of what it
 * returned. A repetition that fails should return NAN. */
static inline double bench_median_of(int reps, double (*rep)(void *arg), void *arg)
{
    double v[64];
    if (reps > 64)
        reps = 64;
    for (int i = 0; i < reps; i++)
        v[i] = rep(arg);
    return bench_median(v, reps);
}

/* True when workload id was asked for: no arguments, or an argument that is
 * a substring of id. Lets `bench_queue 1to1` run a subset. */
static inline bool bench_selected(int argc, char **argv, const char *id)
{
    if (argc <= 1)
        return true;
    for (int i = 1; i < argc; i++)
        if (strstr(id, argv[i]))
            return true;
    return false;
}

/* Prints one result row of contender peer (NULL: mproc's own row, four
 * fields) and flushes, so a later crash of the program still leaves the rows
 * printed so far. */
static inline void bench_peer_row(const char *id, double value, const char *unit, bool higher,
                                  const char *peer)
{
    char v[32] = "nan";
    if (!isnan(value))
        snprintf(v, sizeof v, "%.6g", value);
    printf("%s\t%s\t%s\t%s%s%s\n", id, v, unit, higher ? "higher" : "lower",
           peer ? "\t" : "", peer ? peer : "");
    fflush(stdout);
}

/* Prints one result row of mproc's own (the contract with bench/run.sh). */
static inline void bench_row(const char *id, double value, const char *unit, bool higher)
{
    bench_peer_row(id, value, unit, higher, NULL);
}

/* The path of bench/<name> (a Python script a program runs): from
 * MPROC_SOURCE_DIR, the working directory, or beside this executable's
 * build directory (BUILD/bench/<exe> -> ../../bench/<name>). */
static inline void bench_script_path(const char *name, char *out, size_t cap)
{
    const char *src = getenv("MPROC_SOURCE_DIR");
    char here[4200];
    snprintf(here, sizeof here, "bench/%s", name);
    if (src) {
        snprintf(out, cap, "%s/bench/%s", src, name);
        return;
    }
    if (access(here, R_OK) == 0) {
        snprintf(out, cap, "%s", here);
        return;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    snprintf(out, cap, "%s/../../bench/%s", exe, name);
}

/* Runs python3 (or $PYTHON) with args (args[0] is ignored), then the
 * caller's argv[1..] appended: its exit code, or 1 if it could not run. */
static inline int bench_run_python(char **args, int nargs, int argc, char **argv)
{
    char *all[64];
    int n = 0;
    for (int i = 0; i < nargs && n < 63; i++)
        all[n++] = args[i];
    for (int i = 1; i < argc && n < 63; i++)
        all[n++] = argv[i];
    all[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        const char *py = getenv("PYTHON");
        execvp(py ? py : "python3", all);
        _exit(127);
    }
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0)
        ;
    return pid > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

#endif
