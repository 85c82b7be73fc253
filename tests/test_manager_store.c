/* test_manager_store.c - the manager's dicts in the family arena, worked on
 * directly by the family and through the server: one dict either way, the
 * same answers, and a process killed at any step of a dict operation while
 * it holds the store's lock leaves every dict as it was before or after the
 * operation, valid, with at most one arena block lost (MPROC_WHITEBOX: the
 * kill comes from the store's test hook, and the store is checked with
 * shstore_check and arena_check). */
#include "testutil.h"

#include "internal.h"
#include "manager/manager_internal.h"
#include "manager/shdict.h"

#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ------------------------------------------------------------------ kill switch */

/* Where the armed process dies: its pid (0: whoever runs the hook), the
 * point, and which passage of it. Shared, so the server (forked before it
 * is armed) sees it too. */
struct kill_at {
    _Atomic pid_t pid;
    char point[32];
    _Atomic int nth;
};
static struct kill_at *kill_at;

static void die_hook(const char *point)
{
    pid_t pid = atomic_load(&kill_at->pid);
    if ((pid == 0 || pid == getpid()) && strcmp(point, kill_at->point) == 0 &&
        atomic_fetch_sub(&kill_at->nth, 1) == 1)
        kill(getpid(), SIGKILL);
}

static void arm(pid_t pid, const char *point, int nth)
{
    snprintf(kill_at->point, sizeof kill_at->point, "%s", point);
    atomic_store(&kill_at->nth, nth);
    atomic_store(&kill_at->pid, pid);
}

static int setup(void **state)
{
    (void)state;
    if (!kill_at) {
        kill_at = mmap(NULL, sizeof *kill_at, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        assert_true(kill_at != MAP_FAILED);
    }
    memset(kill_at, 0, sizeof *kill_at);
    strcpy(kill_at->point, "-");
    mp__shdict_test_hook = die_hook;
    return 0;
}

/* ------------------------------------------------------------------ helpers */

/* The dict as text: key=value,... in key order (values are bytes, or i:N). */
static void dict_text(mp_dict *d, char *out, size_t cap)
{
    mp_buf keys = { 0 }, v = { 0 };
    TU_OK(mp_dict_keys(d, &keys));
    size_t at = 0;
    out[0] = '\0';
    for (size_t i = 0; i < keys.len; i += strlen((char *)keys.data + i) + 1) {
        const char *k = (const char *)keys.data + i;
        int64_t n;
        double f;
        int rc = mp_dict_get(d, k, &v);
        if (rc == 0)
            at += (size_t)snprintf(out + at, cap - at, "%s%s=%.*s", at ? "," : "", k, (int)v.len, (char *)v.data);
        else if ((rc = mp_dict_get_i64(d, k, &n)) == 0)
            at += (size_t)snprintf(out + at, cap - at, "%s%s=i:%lld", at ? "," : "", k, (long long)n);
        else if ((rc = mp_dict_get_f64(d, k, &f)) == 0)
            at += (size_t)snprintf(out + at, cap - at, "%s%s=f:%g", at ? "," : "", k, f);
        assert_int_equal(rc, 0);
    }
    size_t len;
    TU_OK(mp_dict_len(d, &len));
    size_t commas = 0;
    for (const char *c = out; *c; c++)
        commas += *c == ',';
    assert_int_equal(len, out[0] ? commas + 1 : 0);
    mp_buf_free(&keys);
    mp_buf_free(&v);
}

/* Blocks in use in the arena that the store does not account for: what a
 * kill may leak. The store is checked (and repaired) on the way. */
static long unaccounted(struct shstore *s)
{
    struct shstore_stats ss;
    struct arena_stats as;
    assert_true(shstore_check(s, &ss));
    assert_true(arena_check(&as));
    return (long)(as.used_blocks + as.stray_blocks) - (long)ss.blocks;
}

static void put(mp_dict *d, const char *k, const char *v) { TU_OK(mp_dict_set(d, k, v, strlen(v))); }

/* ------------------------------------------------------------------ one dict, two paths */

/* A manager started here (its dicts worked on directly) and the same one
 * connected by address (through the server), and dict "d" by each. */
static void start_pair(mp_manager **m, mp_manager **remote, mp_dict **d, mp_dict **r)
{
    TU_OK(mp_manager_start(m, NULL));
    size_t klen;
    const void *key = mp_manager_authkey(*m, &klen);
    TU_OK(mp_manager_connect(remote, mp_manager_address(*m), key, klen));
    TU_OK(mp_dict_open(*m, "d", d));
    TU_OK(mp_dict_open(*remote, "d", r));
}

static void test_direct_and_server_paths_are_one_dict_with_the_same_answers(void **state)
{
    (void)state;
    mp_manager *m, *remote;
    mp_dict *d, *r;
    start_pair(&m, &remote, &d, &r);
    assert_non_null(manager_dicts(m));
    assert_null(manager_dicts(remote));
    mp_dict *both[2] = { d, r };
    for (int i = 0; i < 2; i++) {             /* each path writes, the other reads */
        mp_dict *w = both[i], *o = both[1 - i];
        char text[256];
        TU_OK(mp_dict_clear(w));
        put(w, "b", "2");
        put(o, "a", "1");
        TU_OK(mp_dict_set_i64(w, "n", 41));
        put(w, "b", "22");                    /* a replace keeps its place */
        int64_t n;
        TU_OK(mp_dict_incr(o, "n", 1, &n));
        assert_int_equal(n, 42);
        assert_int_equal(mp_dict_incr(o, "a", 1, NULL), MP_ETYPE);
        TU_OK(mp_dict_set_i64(w, "big", INT64_MAX));
        assert_int_equal(mp_dict_incr(o, "big", 1, NULL), MP_ERANGE);
        TU_OK(mp_dict_del(o, "big"));
        assert_int_equal(mp_dict_del(w, "big"), MP_ENOTFOUND);
        mp_buf b = { 0 };
        assert_int_equal(mp_dict_get(o, "n", &b), MP_ETYPE);
        assert_int_equal(mp_dict_get(w, "none", &b), MP_ENOTFOUND);
        double f;
        assert_int_equal(mp_dict_get_f64(w, "n", &f), MP_ETYPE);
        TU_OK(mp_dict_set_f64(o, "f", 0.5));
        TU_OK(mp_dict_get_f64(w, "f", &f));
        assert_true(f == 0.5);
        assert_int_equal(mp_dict_cas(w, "a", "x", 1, "y", 1), MP_ECONFLICT);
        assert_int_equal(mp_dict_cas(w, "a", NULL, 0, "y", 1), MP_ECONFLICT);
        assert_int_equal(mp_dict_cas(o, "f", "x", 1, "y", 1), MP_ETYPE);
        TU_OK(mp_dict_cas(o, "a", "1", 1, "11", 2));
        TU_OK(mp_dict_cas(w, "c", NULL, 0, "3", 1));
        TU_OK(mp_dict_set(w, "e", "", 0));
        dict_text(w, text, sizeof text);
        assert_string_equal(text, "b=22,a=11,n=i:42,f=f:0.5,c=3,e=");
        char other[256];
        dict_text(o, other, sizeof other);
        assert_string_equal(text, other);
        mp_buf_free(&b);
    }
    assert_true(shstore_check(manager_dicts(m), NULL));
    mp_dict_free(r);
    mp_dict_free(d);
    mp_manager_free(remote);
    mp_manager_free(m);
}

static void test_direct_calls_fail_once_the_server_is_shut_down_or_killed(void **state)
{
    (void)state;
    mp_manager *m;
    mp_dict *d;
    struct arena_stats before, after;
    assert_true(arena_check(&before));
    TU_OK(mp_manager_start(&m, NULL));
    TU_OK(mp_dict_open(m, "d", &d));
    for (int i = 0; i < 100; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        put(d, k, "some value");
    }
    TU_OK(mp_manager_shutdown(m));
    mp_buf b = { 0 };
    assert_int_equal(mp_dict_get(d, "k1", &b), MP_EBROKEN);
    assert_int_equal(mp_dict_set(d, "k1", "v", 1), MP_EBROKEN);
    struct shstore_stats ss;
    assert_true(shstore_check(manager_dicts(m), &ss));
    assert_int_equal(ss.blocks, 0);            /* the server emptied it on its way out */
    mp_dict_free(d);
    mp_manager_free(m);

    TU_OK(mp_manager_start(&m, NULL));
    TU_OK(mp_dict_open(m, "d", &d));
    put(d, "k", "v");
    kill(mp_manager_pid(m), SIGKILL);
    double end = tu_now() + 5 * tu_slow();
    int rc;
    while ((rc = mp_dict_get(d, "k", &b)) == 0 && tu_now() < end)
        usleep(1000);
    assert_int_equal(rc, MP_EBROKEN);
    assert_int_equal(mp_dict_incr(d, "n", 1, NULL), MP_EBROKEN);
    TU_OK(mp_manager_shutdown(m));            /* the reaper frees what it left */
    assert_true(shstore_check(manager_dicts(m), &ss));
    assert_int_equal(ss.blocks, 0);
    mp_dict_free(d);
    mp_manager_free(m);
    mp_buf_free(&b);
    assert_true(arena_check(&after));
    assert_true(after.used_blocks + after.stray_blocks <= before.used_blocks + before.stray_blocks + 4);
}

/* Each connection of the family sets up a shared-memory channel (32 KiB)
 * with the server, and the last of the two to let go frees it. A server
 * killed never lets go: its clients free the channels themselves when they
 * see its process ended (they were left until the family ended). */
static void test_channels_of_a_killed_server_are_freed_by_their_clients(void **state)
{
    (void)state;
    struct arena_stats before, after;
    assert_true(arena_check(&before));
    mp_manager *m;
    mp_list *l;
    mp_mqueue *q;
    TU_OK(mp_manager_start(&m, NULL));
    TU_OK(mp_list_open(m, "l", &l));
    TU_OK(mp_list_append(l, "x", 1));
    TU_OK(mp_manager_queue(m, "q", 0, &q));
    TU_OK(mp_mqueue_put(q, "y", 1, MP_FOREVER));
    struct arena_stats during;
    assert_true(arena_check(&during));
    assert_true(during.used_bytes >= before.used_bytes + 64 * 1024);   /* two channels */
    TU_OK(kill(mp_manager_pid(m), SIGKILL));
    size_t n;
    double end = tu_now() + 5 * tu_slow();
    int rc;
    while ((rc = mp_list_len(l, &n)) == 0 && tu_now() < end)
        usleep(1000);
    assert_int_equal(rc, MP_EBROKEN);
    mp_mqueue_free(q);
    mp_list_free(l);
    mp_manager_free(m);
    assert_true(arena_check(&after));
    if (after.used_bytes > before.used_bytes + 8 * 1024)
        fail_msg("%zu bytes of the arena still in use after the manager was freed",
                 (size_t)(after.used_bytes - before.used_bytes));
}

/* ------------------------------------------------------------------ many processes */

struct storm {
    mp_dict *d;
    _Atomic long done;        /* incrs that returned 0, all children */
    _Atomic bool stop;
};

/* Increments n (and churns a key of its own, so entries come and go and
 * tables grow) until told to stop or killed. */
static int storm_child(void *arg)
{
    struct storm *st = arg;
    char key[32];
    snprintf(key, sizeof key, "own%d", (int)getpid());
    for (long i = 0; !atomic_load(&st->stop); i++) {
        if (mp_dict_incr(st->d, "n", 1, NULL) != 0)
            return 1;
        atomic_fetch_add(&st->done, 1);
        if ((i % 3 == 0 ? mp_dict_set(st->d, key, "v", 1) : i % 3 == 1 ? mp_dict_del(st->d, key) : 0) != 0)
            return 2;
    }
    return 0;
}

/* Direct callers SIGKILLed at random moments while others keep going, and
 * a caller through the server beside them: every counted increment is in
 * the total (a killed caller's last one may be too), the store stays valid
 * and a kill loses at most a block. */
static void test_kill_storm_of_direct_callers_loses_no_counted_increment(void **state)
{
    (void)state;
    mp_manager *m, *remote;
    mp_dict *d, *r;
    start_pair(&m, &remote, &d, &r);
    struct storm *st = mmap(NULL, sizeof *st, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(st != MAP_FAILED);
    st->d = d;
    TU_OK(mp_dict_set_i64(d, "n", 0));
    long leak0 = unaccounted(manager_dicts(m));
    enum { KIDS = 3, KILLS = 30 };
    pid_t kids[KIDS];
    for (int i = 0; i < KIDS; i++)
        kids[i] = tu_fork(storm_child, st);
    unsigned seed = (unsigned)getpid();
    long remote_done = 0;
    for (int k = 0; k < KILLS; k++) {
        for (int j = 0; j < 10; j++, remote_done++)
            TU_OK(mp_dict_incr(r, "n", 1, NULL));
        usleep((useconds_t)(rand_r(&seed) % 2000));
        int i = rand_r(&seed) % KIDS;
        kill(kids[i], SIGKILL);
        assert_int_equal(tu_wait(kids[i], 10 * tu_slow()), -SIGKILL);
        kids[i] = tu_fork(storm_child, st);
    }
    atomic_store(&st->stop, true);
    for (int i = 0; i < KIDS; i++)
        assert_int_equal(tu_wait(kids[i], 10 * tu_slow()), 0);
    int64_t n;
    TU_OK(mp_dict_get_i64(r, "n", &n));
    long counted = atomic_load(&st->done) + remote_done;
    assert_true(n >= counted && n <= counted + KILLS);
    long leaked = unaccounted(manager_dicts(m)) - leak0;
    size_t len;
    TU_OK(mp_dict_len(d, &len));
    assert_true(leaked <= KILLS + (long)len);   /* the children's own keys left behind are not leaks */
    munmap(st, sizeof *st);
    mp_dict_free(r);
    mp_dict_free(d);
    mp_manager_free(remote);
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ the budget */

static int exec3(struct shstore *s, int op, const char *key, const struct mval *v, struct mval *out)
{
    struct mmsg m = { .n = v ? 4 : 3 };
    m.v[0] = (struct mval){ .type = MV_INT, .i = op };
    m.v[1] = (struct mval){ .type = MV_TEXT, .p = (const uint8_t *)"b", .len = 1 };
    m.v[2] = (struct mval){ .type = MV_TEXT, .p = (const uint8_t *)key, .len = strlen(key) };
    if (v)
        m.v[3] = *v;
    void *owned;
    struct mval none;
    TU_OK(shstore_lock(s));
    int rc = shdict_exec(s, &m, out ? out : &none, &owned);
    shstore_unlock(s);
    free(owned);
    return rc;
}

static void test_store_budget_counts_every_block_and_refuses_past_it(void **state)
{
    (void)state;
    struct shstore *s = shstore_new();
    assert_non_null(s);
    TU_OK(shstore_serve(s, 64 * 1024));
    struct shstore_stats st;
    char val[100] = { 0 }, key[16];
    struct mval v = { .type = MV_BYTES, .p = (const uint8_t *)val, .len = sizeof val };
    int n = 0, rc;
    for (; (rc = exec3(s, OP_DICT_SET, (snprintf(key, sizeof key, "k%d", n), key), &v, NULL)) == 0; n++)
        ;
    assert_int_equal(rc, MP_ENOMEM);
    assert_true(n > 200 && n < 400);           /* 192-byte entries and their table, in 64 KiB */
    assert_true(shstore_check(s, &st));
    assert_true(st.bytes <= 64 * 1024 && shstore_bytes(s) == st.bytes);
    assert_int_equal(st.entries, n);
    struct mval num = { .type = MV_INT, .i = 7 }, got;
    assert_int_equal(exec3(s, OP_DICT_SET, key, &num, NULL), MP_ENOMEM);   /* nothing changed */
    assert_int_equal(exec3(s, OP_DICT_GET, key, NULL, NULL), MP_ENOTFOUND);
    TU_OK(exec3(s, OP_DICT_SET, "k0", &v, NULL));              /* a replace of the same size fits */
    TU_OK(exec3(s, OP_DICT_SET, "k1", &num, NULL));            /* and a smaller one */
    TU_OK(exec3(s, OP_DICT_DEL, "k2", NULL, NULL));            /* a delete gives room back */
    struct mval three = { .type = MV_INT, .i = 3 };
    TU_OK(exec3(s, OP_DICT_INCR, "k1", &three, &got));
    assert_int_equal(got.i, 10);
    TU_OK(exec3(s, OP_DICT_SET, key, &num, NULL));
    assert_true(shstore_check(s, &st));
    assert_true(st.bytes <= 64 * 1024);
    TU_OK(exec3(s, OP_DICT_CLEAR, "-", NULL, NULL));
    assert_true(shstore_check(s, &st));
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.blocks, 2);            /* the directory and the dict */
    shstore_destroy(s);
}

/* ------------------------------------------------------------------ a direct caller killed */

struct scenario {
    const char *point;
    int nth;
    void (*prepare)(mp_dict *d);
    int (*op)(mp_dict *d);
    const char *before, *after;     /* the dict as text */
};

static void prep_two(mp_dict *d)
{
    put(d, "a", "1");
    TU_OK(mp_dict_set_i64(d, "n", 5));
}

static void prep_six(mp_dict *d)    /* the next new key resizes the table */
{
    static const char *k[] = { "k1", "k2", "k3", "k4", "k5", "k6" };
    for (int i = 0; i < 6; i++)
        put(d, k[i], "v");
}

static int op_new(mp_dict *d) { return mp_dict_set(d, "z", "new", 3); }
static int op_replace(mp_dict *d) { return mp_dict_set(d, "a", "long value", 10); }
static int op_number(mp_dict *d) { return mp_dict_set_i64(d, "n", 6); }
static int op_del(mp_dict *d) { return mp_dict_del(d, "a"); }
static int op_incr(mp_dict *d) { return mp_dict_incr(d, "n", 10, NULL); }
static int op_incr_new(mp_dict *d) { return mp_dict_incr(d, "m", 1, NULL); }
static int op_clear(mp_dict *d) { return mp_dict_clear(d); }
static int op_cas(mp_dict *d) { return mp_dict_cas(d, "a", "1", 1, "2", 1); }
static int op_cas_new(mp_dict *d) { return mp_dict_cas(d, "c", NULL, 0, "3", 1); }

#define SIX "k1=v,k2=v,k3=v,k4=v,k5=v,k6=v"
static const struct scenario scenarios[] = {
    { "insert-built", 1, prep_two, op_new, "a=1,n=i:5", "a=1,n=i:5,z=new" },
    { "insert-committed", 1, prep_two, op_new, "a=1,n=i:5", "a=1,n=i:5,z=new" },
    { "resize-built", 1, prep_six, op_new, SIX, SIX ",z=new" },
    { "resize-committed", 1, prep_six, op_new, SIX, SIX ",z=new" },
    { "insert-committed", 1, prep_six, op_new, SIX, SIX ",z=new" },
    { "replace-built", 1, prep_two, op_replace, "a=1,n=i:5", "a=long value,n=i:5" },
    { "replace-committed", 1, prep_two, op_replace, "a=1,n=i:5", "a=long value,n=i:5" },
    { "number-before", 1, prep_two, op_number, "a=1,n=i:5", "a=1,n=i:6" },
    { "number-committed", 1, prep_two, op_number, "a=1,n=i:5", "a=1,n=i:6" },
    { "del-committed", 1, prep_two, op_del, "a=1,n=i:5", "n=i:5" },
    { "incr-before", 1, prep_two, op_incr, "a=1,n=i:5", "a=1,n=i:15" },
    { "incr-committed", 1, prep_two, op_incr, "a=1,n=i:5", "a=1,n=i:15" },
    { "insert-built", 1, prep_two, op_incr_new, "a=1,n=i:5", "a=1,n=i:5,m=i:1" },
    { "insert-committed", 1, prep_two, op_incr_new, "a=1,n=i:5", "a=1,n=i:5,m=i:1" },
    { "clear-retired", 1, prep_six, op_clear, SIX, "" },
    { "clear-committed", 1, prep_six, op_clear, SIX, "" },
    { "clear-entry", 3, prep_six, op_clear, SIX, "" },
    { "clear-table", 1, prep_six, op_clear, SIX, "" },
    { "replace-built", 1, prep_two, op_cas, "a=1,n=i:5", "a=2,n=i:5" },
    { "replace-committed", 1, prep_two, op_cas, "a=1,n=i:5", "a=2,n=i:5" },
    { "insert-committed", 1, prep_two, op_cas_new, "a=1,n=i:5", "a=1,n=i:5,c=3" },
};

/* Points after the operation's commit: it must have happened (a resize
 * is not the commit of the insert it makes room for). */
static bool committed(const char *point)
{
    return (strstr(point, "committed") && strncmp(point, "resize", 6) != 0) ||
           !strcmp(point, "clear-entry") || !strcmp(point, "clear-table");
}

static const struct scenario *running;

static int run_armed(void *d)
{
    arm(0, running->point, running->nth);
    running->op(d);
    return 0;                 /* the point was never reached */
}

static void test_direct_caller_killed_at_every_step_leaves_the_dict_whole(void **state)
{
    (void)state;
    mp_manager *m;
    TU_OK(mp_manager_start(&m, NULL));
    struct shstore *s = manager_dicts(m);
    for (size_t i = 0; i < sizeof scenarios / sizeof *scenarios; i++) {
        const struct scenario *sc = &scenarios[i];
        char name[16], text[256];
        snprintf(name, sizeof name, "d%zu", i);
        mp_dict *d, *other;
        TU_OK(mp_dict_open(m, name, &d));
        TU_OK(mp_dict_open(m, "bystander", &other));
        put(other, name, "untouched");
        sc->prepare(d);
        dict_text(d, text, sizeof text);
        assert_string_equal(text, sc->before);
        long leak0 = unaccounted(s);
        running = sc;
        int rc = tu_wait(tu_fork(run_armed, d), 10 * tu_slow());
        if (rc != -SIGKILL)
            fail_msg("%s (case %zu): not killed there (%d)", sc->point, i, rc);
        long leaked = unaccounted(s) - leak0;     /* the check repairs first */
        dict_text(d, text, sizeof text);
        if (committed(sc->point))
            assert_string_equal(text, sc->after);
        else if (strcmp(text, sc->before) != 0)
            assert_string_equal(text, sc->after);
        assert_true(leaked >= 0 && leaked <= 1);
        mp_buf b = { 0 };
        TU_OK(mp_dict_get(other, name, &b));      /* the other dicts are untouched */
        assert_memory_equal(b.data, "untouched", 9);
        for (int k = 0; k < 40; k++) {            /* and this one works on */
            char key[16];
            snprintf(key, sizeof key, "after%d", k);
            TU_OK(mp_dict_set_i64(d, key, k));
        }
        TU_OK(mp_dict_del(d, "after7"));
        size_t n0 = 0, n1 = 0;
        TU_OK(mp_dict_clear(d));
        TU_OK(mp_dict_len(d, &n0));
        assert_int_equal(n0, 0);
        put(d, "x", "y");
        TU_OK(mp_dict_len(d, &n1));
        assert_int_equal(n1, 1);
        assert_true(shstore_check(s, NULL));
        mp_buf_free(&b);
        mp_dict_free(other);
        mp_dict_free(d);
    }
    TU_OK(mp_manager_shutdown(m));
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ closing and dropping */

/* A store of three dicts of three keys each, standalone (this thread holds
 * its life lock). */
static struct shstore *three_dicts(void)
{
    struct shstore *s = shstore_new();
    assert_non_null(s);
    TU_OK(shstore_serve(s, 0));
    const char *names[] = { "x", "y", "z" }, *keys[] = { "a", "b", "c" };
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 3; k++) {
            struct mmsg m = { .n = 4 };
            m.v[0] = (struct mval){ .type = MV_INT, .i = OP_DICT_SET };
            m.v[1] = (struct mval){ .type = MV_TEXT, .p = (const uint8_t *)names[i], .len = 1 };
            m.v[2] = (struct mval){ .type = MV_TEXT, .p = (const uint8_t *)keys[k], .len = 1 };
            m.v[3] = (struct mval){ .type = MV_BYTES, .p = (const uint8_t *)"value", .len = 5 };
            struct mval out;
            void *owned;
            TU_OK(shstore_lock(s));
            TU_OK(shdict_exec(s, &m, &out, &owned));
            shstore_unlock(s);
        }
    }
    return s;
}

struct armed_call { struct shstore *s; const char *point; int nth; bool drop; };

static int close_or_drop_armed(void *arg)
{
    struct armed_call *a = arg;
    arm(0, a->point, a->nth);
    if (a->drop) {
        TU_OK(shstore_lock(a->s));
        shdict_drop(a->s, (const uint8_t *)"y", 1);
        shstore_unlock(a->s);
    } else {
        shstore_close(a->s);
    }
    return 0;                 /* the point was never reached */
}

/* A process killed anywhere inside closing the store (the server leaving)
 * or dropping one dict (a Python client's last reference going): the next
 * holder of the lock finishes the job, and at most one block is lost. */
static void test_close_and_drop_killed_midway_are_finished_by_the_next_holder(void **state)
{
    (void)state;
    /* how often each point is passed: closing three dicts of three keys
     * (the directory's clear, each dict's, 9 entries and 3 directory
     * entries, 4 tables), and dropping one of them */
    static const struct { const char *point; int close, drop; } points[] = {
        { "clear-retired", 4, 1 }, { "clear-committed", 4, 1 }, { "clear-entry", 12, 3 },
        { "clear-table", 4, 1 }, { "drop-committed", 0, 1 },
    };
    for (int drop = 0; drop < 2; drop++) {
        for (size_t p = 0; p < sizeof points / sizeof *points; p++) {
            for (int nth = 1; nth <= (drop ? points[p].drop : points[p].close); nth++) {
                struct shstore *s = three_dicts();
                long leak0 = unaccounted(s);
                struct armed_call a = { s, points[p].point, nth, drop };
                int rc = tu_wait(tu_fork(close_or_drop_armed, &a), 10 * tu_slow());
                if (rc != -SIGKILL)
                    fail_msg("%s %s #%d: not killed there (%d)", drop ? "drop" : "close", a.point, nth, rc);
                long leaked = unaccounted(s) - leak0;    /* repaired first */
                struct shstore_stats st;
                assert_true(shstore_check(s, &st));
                /* before the first commit nothing happened; after it, the
                 * next holder finished it (a drop's own commit aside: the
                 * dict is then empty but still named) */
                bool before = !strcmp(a.point, "clear-retired") && nth == 1;
                bool gone = !strcmp(a.point, "drop-committed");
                assert_int_equal(st.entries, before ? 9 : drop ? 6 : 0);
                assert_int_equal(st.dicts, drop ? (gone ? 2 : 3) : before ? 3 : 0);
                assert_true(leaked <= 1);
                shstore_close(s);                   /* and what is left goes */
                assert_true(shstore_check(s, &st));
                assert_int_equal(st.blocks, 0);
                shstore_destroy(s);
            }
        }
    }
}

/* ------------------------------------------------------------------ the server killed */

static const char *const server_points[] = {
    "insert-built", "insert-committed", "replace-committed", "del-committed", "resize-committed",
    "clear-committed", "clear-entry",
};

static void test_server_killed_inside_a_dict_operation_leaves_a_store_its_reaper_frees(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof server_points / sizeof *server_points; i++) {
        mp_manager *m, *remote;
        mp_dict *d, *r;
        start_pair(&m, &remote, &d, &r);
        prep_six(d);
        put(d, "k1", "v");
        struct shstore *s = manager_dicts(m);
        long leak0 = unaccounted(s);
        arm(mp_manager_pid(m), server_points[i], 1);
        /* through the server: new keys (the 7th resizes), a replace, a delete, a clear */
        int rc = mp_dict_set(r, "z", "new", 3);
        if (rc == 0)
            rc = mp_dict_set(r, "k2", "longer value", 12);
        if (rc == 0)
            rc = mp_dict_del(r, "k3");
        if (rc == 0)
            rc = mp_dict_clear(r);
        assert_int_equal(rc, MP_EBROKEN);          /* it died on the way */
        mp_buf b = { 0 };
        double end = tu_now() + 5 * tu_slow();
        while ((rc = mp_dict_get(d, "k1", &b)) == 0 && tu_now() < end)
            usleep(1000);
        assert_int_equal(rc, MP_EBROKEN);
        long leaked = unaccounted(s) - leak0;      /* repaired and valid */
        assert_true(leaked <= 1);
        TU_OK(mp_manager_shutdown(m));
        struct shstore_stats ss;
        assert_true(shstore_check(s, &ss));
        assert_int_equal(ss.blocks, 0);
        atomic_store(&kill_at->pid, -1);
        mp_dict_free(r);
        mp_dict_free(d);
        mp_manager_free(remote);
        mp_manager_free(m);
    }
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_direct_and_server_paths_are_one_dict_with_the_same_answers, setup),
        cmocka_unit_test_setup(test_direct_calls_fail_once_the_server_is_shut_down_or_killed, setup),
        cmocka_unit_test_setup(test_channels_of_a_killed_server_are_freed_by_their_clients, setup),
        cmocka_unit_test_setup(test_kill_storm_of_direct_callers_loses_no_counted_increment, setup),
        cmocka_unit_test_setup(test_store_budget_counts_every_block_and_refuses_past_it, setup),
        cmocka_unit_test_setup(test_direct_caller_killed_at_every_step_leaves_the_dict_whole, setup),
        cmocka_unit_test_setup(test_close_and_drop_killed_midway_are_finished_by_the_next_holder, setup),
        cmocka_unit_test_setup(test_server_killed_inside_a_dict_operation_leaves_a_store_its_reaper_frees, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
