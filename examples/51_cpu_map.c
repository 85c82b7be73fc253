/* 51_cpu_map.c - a CPU-bound map on every core, against one process doing it all */
#include <mproc.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Counts the primes below n: pure CPU, no shared state. */
static int count_primes(const void *in, size_t len, mp_buf *out)
{
    int n, count = 0;
    memcpy(&n, in, len);
    for (int i = 2; i < n; i++) {
        int prime = 1;
        for (int d = 2; d * d <= i && prime; d++)
            prime = i % d != 0;
        count += prime;
    }
    return mp_buf_append(out, &count, sizeof count);
}

/* The 1-minute load average: how many processes wanted a CPU, on average. */
static double load_average(void)
{
    double load = 0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &load) != 1)
            load = 0;
        fclose(f);
    }
    return load;
}

static double timed_map(int workers, const int *in, int *out, int n)
{
    mp_pool *pool;
    mp_pool_new(&pool, &(mp_pool_opts){ .processes = workers });
    double t0 = now();
    mp_pool_map(pool, count_primes, in, (size_t)n, sizeof *in, out, sizeof *out, 1);
    double dt = now() - t0;
    mp_pool_free(pool);
    return dt;
}

int main(void)
{
    enum { N = 40 };
    int in[N], out[N], cores = mp_cpu_count();
    double load_before = load_average();
    for (int i = 0; i < N; i++)
        in[i] = 60000 + 1000 * i;
    printf("counting primes below 60000..99000, %d ranges\n", N);
    double one = timed_map(1, in, out, N);
    printf("  1 worker:  %.2f s\n", one);
    double all = timed_map(cores, in, out, N);
    printf("  %d workers: %.2f s  (speed-up %.1fx)\n", cores, all, one / all);
    printf("  The speed-up is at most the number of cores, %d here%s. Other programs\n"
           "  take their share: the load average was %.2f before this started (about\n"
           "  that many processes wanting a core), so on a busy machine the speed-up\n"
           "  drops toward 1.0x even though the pool spreads the work over %d workers.\n",
           cores, cores == 1 ? " (so none is possible)" : "", load_before, cores);
    printf("  primes below %d: %d (results come back in input order)\n", in[N - 1], out[N - 1]);
    return 0;
}
