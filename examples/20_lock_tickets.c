/* 20_lock_tickets.c - ten buyers, one ticket: oversold without a lock, sold once with one */
#include <mproc.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* What every buyer process gets (copied in with arg_size): the lock is in
 * the shared arena, so the pointer is good in every child. */
struct buyer {
    int id;
    mp_lock *lock;          /* NULL: buy without one */
    char path[64];          /* the "database": a file holding {"count": N} */
};

static int read_count(const char *path)
{
    FILE *f = fopen(path, "r");
    int n = -1;
    if (f) {
        if (fscanf(f, " {\"count\": %d}", &n) != 1)
            n = -1;
        fclose(f);
    }
    return n;
}

static void write_count(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "{\"count\": %d}\n", n);
        fclose(f);
    }
}

/* Check, think a little (the network, the user...), then buy: the gap
 * between the check and the write is where a race gets in. */
static int buy(void *arg)
{
    struct buyer *b = arg;
    srand((unsigned)getpid());
    if (b->lock)
        mp_lock_acquire(b->lock, MP_FOREVER);
    int left = read_count(b->path);
    usleep(20000 + (useconds_t)(rand() % 30000));
    int bought = left > 0;
    if (bought) {
        write_count(b->path, left - 1);
        printf("  buyer %d saw %d left and bought it\n", b->id, left);
    } else {
        printf("  buyer %d saw %d left: sold out\n", b->id, left);
    }
    if (b->lock)
        mp_lock_release(b->lock);
    return bought ? 0 : 1;
}

/* Starts ten buyers at once and counts how many got a ticket. */
static int sell_one_ticket(const char *path, mp_lock *lock)
{
    write_count(path, 1);
    mp_process *p[10];
    for (int i = 0; i < 10; i++) {
        struct buyer b = { .id = i, .lock = lock };
        snprintf(b.path, sizeof b.path, "%s", path);
        mp_process_new(&p[i], buy, &b, &(mp_process_opts){ .arg_size = sizeof b });
        mp_process_start(p[i]);
    }
    int sold = 0;
    for (int i = 0; i < 10; i++) {
        int code = -1;
        mp_process_join(p[i], MP_FOREVER);
        mp_process_exitcode(p[i], &code);
        sold += code == 0;
        mp_process_free(p[i]);
    }
    return sold;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    char path[64];
    snprintf(path, sizeof path, "/tmp/mproc-ticket-%d.json", (int)getpid());

    printf("One ticket, ten buyers, no lock: each checks, hesitates, then buys.\n");
    int sold = sell_one_ticket(path, NULL);
    printf("=> %d tickets sold for 1 seat: buyers checked before the others had bought.\n\n", sold);

    printf("Again, with an mp_lock around check-and-buy (Python's `with lock:`):\n");
    mp_lock *lock;
    mp_lock_new(&lock);
    sold = sell_one_ticket(path, lock);
    printf("=> %d ticket sold: the lock turned the check and the buy into one step.\n", sold);

    mp_lock_free(lock);
    unlink(path);
    return sold == 1 ? 0 : 1;
}
