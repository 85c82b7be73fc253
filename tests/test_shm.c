/* test_shm.c - named shared memory: create/open/exclusive rules, sizes,
 * names as Python spells them, sharing with a child and with python3, and
 * nothing left in /dev/shm afterwards. */
#include "sync_helpers.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static char prefix[64];

/* A name no other test run uses: "mptest_<pid>_<tag>". */
static const char *name_of(const char *tag)
{
    static char buf[128];
    snprintf(buf, sizeof buf, "%s%s", prefix, tag);
    return buf;
}

static int leftovers(void)
{
    DIR *d = opendir("/dev/shm");
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    if (d)
        closedir(d);
    return n;
}

/* ------------------------------------------------------------------ arguments */

static void test_shm_new_refuses_bad_arguments(void **state)
{
    (void)state;
    mp_shm *s;
    TU_ASSERT_RC(mp_shm_new(NULL, "x", 10, MP_CREATE), MP_EINVAL);
    TU_ASSERT_RC(mp_shm_new(&s, name_of("a"), 0, MP_CREATE), MP_EINVAL);   /* create needs a size */
    assert_null(s);
    TU_ASSERT_RC(mp_shm_new(&s, name_of("a"), 10, MP_EXCL), MP_EINVAL);    /* EXCL needs CREATE */
    TU_ASSERT_RC(mp_shm_new(&s, name_of("a"), 10, 4), MP_EINVAL);          /* unknown flag */
    TU_ASSERT_RC(mp_shm_new(&s, NULL, 10, 0), MP_EINVAL);                  /* open needs a name */
    TU_ASSERT_RC(mp_shm_new(&s, "a/b", 10, MP_CREATE), MP_EINVAL);         /* as shm_open says */
    tu_last_error_has("mp_shm_new: name \"a/b\" has a '/' inside", NULL);   /* not a size's fault */
    TU_ASSERT_RC(mp_shm_new(&s, "", 10, MP_CREATE), MP_EINVAL);
    tu_last_error_has("mp_shm_new: name \"\" is empty", NULL);
    TU_ASSERT_RC(mp_shm_new(&s, "/", 10, MP_CREATE), MP_EINVAL);
    const char *dots[] = { ".", "..", "/.", "/.." };          /* not "empty or smaller" */
    for (int i = 0; i < 4; i++) {
        TU_ASSERT_RC(mp_shm_new(&s, dots[i], 10, MP_CREATE), MP_EINVAL);
        tu_last_error_has("mp_shm_new: name \"", dots[i], "\" names a directory", NULL);
    }
    char longname[300];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    TU_ASSERT_RC(mp_shm_new(&s, longname, 10, MP_CREATE), MP_EINVAL);    /* glibc: past NAME_MAX */
    /* NAME_MAX bytes are the most, with a leading '/' or without (Python's
     * SharedMemory takes "/" and 255 more); the name comes back as given. */
    char longest[NAME_MAX + 2];
    snprintf(longest, sizeof longest, "/%s", prefix);
    memset(longest + 1 + strlen(prefix), 'm', NAME_MAX - strlen(prefix));
    longest[NAME_MAX + 1] = 0;
    for (int slash = 1; slash >= 0; slash--) {
        const char *given = longest + !slash;
        TU_OK(mp_shm_new(&s, given, 10, MP_CREATE | MP_EXCL));
        assert_string_equal(mp_shm_name(s), given);
        TU_OK(mp_shm_unlink(s));
        mp_shm_free(s);
    }
    longest[NAME_MAX] = 'm';                       /* one more past the '/' */
    char past[NAME_MAX + 3];
    snprintf(past, sizeof past, "%sm", longest);
    TU_ASSERT_RC(mp_shm_new(&s, past, 10, MP_CREATE), MP_EINVAL);
    tu_last_error_has("name is 256 bytes after any leading '/'", NULL);
    assert_null(mp_shm_buf(NULL));
    assert_int_equal(mp_shm_size(NULL), 0);
    assert_null(mp_shm_name(NULL));
    TU_ASSERT_RC(mp_shm_unlink(NULL), MP_EINVAL);
    mp_shm_free(NULL);
    assert_int_equal(leftovers(), 0);
}

/* A segment bigger than the room /dev/shm has left is refused as it is
 * made, not at its first write past that room (SIGBUS). */
static void test_shm_bigger_than_dev_shm_is_enospc(void **state)
{
    (void)state;
    struct statvfs fs;
    TU_OK(statvfs("/dev/shm", &fs));
    size_t room = (size_t)fs.f_bavail * fs.f_frsize;
    mp_shm *s;
    TU_ASSERT_RC(mp_shm_new(&s, name_of("huge"), room + ((size_t)1 << 30), MP_CREATE), -ENOSPC);
    assert_null(s);
    tu_last_error_has("more than /dev/shm has room for", NULL);
    assert_int_equal(leftovers(), 0);
}

static void test_shm_open_of_missing_name_returns_enoent(void **state)
{
    (void)state;
    mp_shm *s;
    TU_ASSERT_RC(mp_shm_new(&s, name_of("missing"), 0, 0), -ENOENT);
    assert_null(s);
}

/* ------------------------------------------------------------------ create and open */

static void test_shm_create_then_open_share_one_buffer(void **state)
{
    (void)state;
    mp_shm *a, *b;
    TU_OK(mp_shm_new(&a, name_of("share"), 5000, MP_CREATE | MP_EXCL));
    assert_string_equal(mp_shm_name(a), name_of("share"));   /* without the '/' */
    assert_int_equal(mp_shm_size(a), 5000);
    memcpy(mp_shm_buf(a), "hello", 6);
    TU_OK(mp_shm_new(&b, name_of("share"), 0, 0));           /* size 0: whatever it has */
    assert_int_equal(mp_shm_size(b), 5000);
    assert_string_equal(mp_shm_buf(b), "hello");
    mp_shm_free(b);
    TU_OK(mp_shm_new(&b, name_of("share"), 100, 0));         /* less than it has: fine */
    assert_int_equal(mp_shm_size(b), 5000);
    mp_shm_free(b);
    TU_ASSERT_RC(mp_shm_new(&b, name_of("share"), 6000, 0), MP_EINVAL);   /* more: refused */
    TU_ASSERT_RC(mp_shm_new(&b, name_of("share"), 10, MP_CREATE | MP_EXCL), -EEXIST);
    TU_OK(mp_shm_new(&b, name_of("share"), 10, MP_CREATE));  /* CREATE alone opens it */
    assert_int_equal(mp_shm_size(b), 5000);
    assert_string_equal(mp_shm_buf(b), "hello");
    TU_OK(mp_shm_unlink(b));
    mp_shm_free(b);
    TU_ASSERT_RC(mp_shm_unlink(a), -ENOENT);                 /* already gone */
    assert_string_equal(mp_shm_buf(a), "hello");             /* mapped until freed */
    mp_shm_free(a);
    assert_int_equal(leftovers(), 0);
}

static void test_shm_without_a_name_gets_a_python_style_one(void **state)
{
    (void)state;
    mp_shm *s;
    TU_OK(mp_shm_new(&s, NULL, 64, MP_CREATE));
    const char *n = mp_shm_name(s);
    assert_int_equal(strlen(n), 12);
    assert_memory_equal(n, "psm_", 4);
    mp_shm *again;
    TU_OK(mp_shm_new(&again, n, 0, 0));
    mp_shm_free(again);
    TU_OK(mp_shm_unlink(s));
    mp_shm_free(s);
}

static void test_shm_name_keeps_a_leading_slash_the_caller_gave(void **state)
{
    (void)state;
    char slashed[160];
    snprintf(slashed, sizeof slashed, "/%s", name_of("slash"));
    mp_shm *s, *t;
    TU_OK(mp_shm_new(&s, slashed, 64, MP_CREATE | MP_EXCL));
    assert_string_equal(mp_shm_name(s), slashed);            /* as Python's .name */
    TU_OK(mp_shm_new(&t, name_of("slash"), 0, 0));           /* shm_open ignores extra '/' */
    mp_shm_free(t);
    TU_OK(mp_shm_unlink(s));
    mp_shm_free(s);
}

static int child_writes(void *arg)
{
    mp_shm *s = arg;
    strcpy(mp_shm_buf(s), "from child");
    return 0;
}

static void test_shm_is_shared_with_a_forked_child(void **state)
{
    (void)state;
    mp_shm *s;
    TU_OK(mp_shm_new(&s, name_of("fork"), 4096, MP_CREATE | MP_EXCL));
    assert_int_equal(tu_wait(tu_fork(child_writes, s), 10), 0);
    assert_string_equal(mp_shm_buf(s), "from child");
    TU_OK(mp_shm_unlink(s));
    mp_shm_free(s);
}

static int child_reads_writes_and_frees(void *arg)
{
    mp_shm *s = *(mp_shm **)arg;           /* the handle itself, through the argument */
    char *buf = mp_shm_buf(s);
    if (!buf || strcmp(buf, "from parent") != 0 || mp_shm_size(s) != 4096)
        return 1;
    strcpy(buf, "from child");
    mp_shm_free(s);                        /* unmaps here; the parent's handle lives on */
    return 0;
}

static void test_shm_handle_reaches_children_under_every_start_method(void **state)
{
    (void)state;
    SKIP_START_METHODS_UNDER_VALGRIND();
    mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    for (int m = 0; m < 3; m++) {
        mp_shm *s;
        TU_OK(mp_shm_new(&s, name_of("methods"), 4096, MP_CREATE | MP_EXCL));
        strcpy(mp_shm_buf(s), "from parent");
        mp_process *p;
        mp_process_opts o = { .method = methods[m], .arg_size = sizeof s };
        TU_OK(mp_process_new(&p, child_reads_writes_and_frees, &s, &o));
        TU_OK(mp_process_start(p));
        TU_OK(mp_process_join(p, 20 * tu_slow()));
        int code = -1;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, 0);
        TU_OK(mp_process_free(p));
        assert_string_equal(mp_shm_buf(s), "from child");
        assert_string_equal(mp_shm_name(s), name_of("methods"));
        TU_OK(mp_shm_unlink(s));
        mp_shm_free(s);
    }
    assert_int_equal(leftovers(), 0);
}

struct swapped { mp_shm *s; mp_event *go; };

/* A spawned child's first mp_shm_buf, after the name was made again: 0 if
 * it is refused, as the message says. */
static int child_maps_after_the_swap(void *arg)
{
    struct swapped *w = arg;
    if (mp_event_wait(w->go, 20 * tu_slow()) != 0)
        return 2;
    if (mp_shm_buf(w->s) != NULL)
        return 3;
    return strstr(mp_last_error(), "changed before this process first used it") ? 0 : 4;
}

/* A spawned child maps the handle's segment by name. Made again under that
 * name (smaller, or the same size), it is another segment: the child gets
 * NULL, not a mapping whose tail faults or whose bytes are another's. */
static void test_shm_name_made_again_is_not_mapped_as_the_handle(void **state)
{
    (void)state;
    SKIP_START_METHODS_UNDER_VALGRIND();
    size_t sizes[] = { 4096, (size_t)1 << 20 };
    for (int i = 0; i < 2; i++) {
        struct swapped w;
        TU_OK(mp_shm_new(&w.s, name_of("swap"), (size_t)1 << 20, MP_CREATE | MP_EXCL));
        TU_OK(mp_event_new(&w.go));
        mp_process *p;
        mp_process_opts o = { .method = MP_SPAWN, .arg_size = sizeof w };
        TU_OK(mp_process_new(&p, child_maps_after_the_swap, &w, &o));
        TU_OK(mp_process_start(p));
        TU_OK(mp_shm_unlink(w.s));
        mp_shm *other;
        TU_OK(mp_shm_new(&other, name_of("swap"), sizes[i], MP_CREATE | MP_EXCL));
        TU_OK(mp_event_set(w.go));
        TU_OK(mp_process_join(p, 20 * tu_slow()));
        int code = -1;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, 0);
        TU_OK(mp_process_free(p));
        TU_OK(mp_shm_unlink(other));
        mp_shm_free(other);
        mp_shm_free(w.s);
        mp_event_free(w.go);
    }
    assert_int_equal(leftovers(), 0);
}

/* ------------------------------------------------------------------ python3 */

static bool have_python(void)
{
    return system("python3 -c 'import multiprocessing.shared_memory' >/dev/null 2>&1") == 0;
}

/* Python's tracker would unlink (and warn about) a segment it did not make. */
#define PY_PRELUDE "from multiprocessing import shared_memory as sm, resource_tracker as rt; "

/* A child that mapped a handle its creator then freed, given the new handle
 * made at the same address: it maps the new segment, not the old one. */
struct reused { mp_shm *_Atomic now; _Atomic int step; };

static bool first_mapped(void *arg)
{
    return atomic_load(&((struct reused *)arg)->step) == 1;
}

static int child_maps_both(void *arg)
{
    struct reused *r = arg;
    char *first = mp_shm_buf(atomic_load(&r->now));
    if (!first || strcmp(first, "first") != 0)
        return 1;
    atomic_store(&r->step, 1);
    while (atomic_load(&r->step) != 2)
        usleep(1000);
    mp_shm *s = atomic_load(&r->now);
    char *second = mp_shm_buf(s);
    if (!second || strcmp(second, "second") != 0)
        return 2;
    memset(second, 'x', mp_shm_size(s));    /* all of it: mapped at its size */
    mp_shm_free(s);
    return 0;
}

static void test_shm_handle_made_where_a_freed_one_was_maps_its_own_segment(void **state)
{
    (void)state;
    struct reused *r = mp_shared_alloc(sizeof *r);
    mp_shm *s1, *s2;
    TU_OK(mp_shm_new(&s1, NULL, 4096, MP_CREATE));
    strcpy(mp_shm_buf(s1), "first");
    atomic_store(&r->now, s1);
    pid_t child = tu_fork(child_maps_both, r);
    assert_true(tu_wait_for(first_mapped, r, 10 * tu_slow()));
    TU_OK(mp_shm_unlink(s1));
    mp_shm_free(s1);
    TU_OK(mp_shm_new(&s2, NULL, 1 << 20, MP_CREATE));
    assert_ptr_equal(s2, s1);               /* the arena gives the freed block back first */
    strcpy(mp_shm_buf(s2), "second");
    atomic_store(&r->now, s2);
    atomic_store(&r->step, 2);
    assert_int_equal(tu_wait(child, 10 * tu_slow()), 0);
    assert_int_equal(((char *)mp_shm_buf(s2))[(1 << 20) - 1], 'x');
    TU_OK(mp_shm_unlink(s2));
    mp_shm_free(s2);
    mp_shared_free(r);
}

static int child_opens_or_makes(void *arg)
{
    (void)arg;
    mp_shm *s;
    if (mp_shm_new(&s, name_of("sizing"), 4096, MP_CREATE) != 0)
        return 1;
    int ok = mp_shm_size(s) == 4096;
    mp_shm_free(s);
    return ok ? 0 : 2;
}

/* "New or existing" meeting a segment whose maker is between its open and
 * its sizing (shm_open, then ftruncate: two calls): it waits for the size. */
static void test_shm_opened_while_its_maker_sizes_it_waits_for_the_size(void **state)
{
    (void)state;
    char path[160];
    snprintf(path, sizeof path, "/%s", name_of("sizing"));
    int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0600);     /* made, not sized yet */
    assert_true(fd >= 0);
    double t0 = tu_now();
    pid_t child = tu_fork(child_opens_or_makes, NULL);
    usleep(100 * 1000);
    TU_OK(ftruncate(fd, 4096));
    close(fd);
    assert_int_equal(tu_wait(child, 10 * tu_slow()), 0);
    assert_true(tu_now() - t0 >= 0.1);
    TU_OK(shm_unlink(path));
    assert_int_equal(leftovers(), 0);
}

static void test_shm_python_reads_what_c_wrote(void **state)
{
    (void)state;
    if (!have_python())
        skip();
    mp_shm *s;
    TU_OK(mp_shm_new(&s, name_of("c2py"), 1000, MP_CREATE | MP_EXCL));
    strcpy(mp_shm_buf(s), "written by C");
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "python3 -c \"" PY_PRELUDE "s = sm.SharedMemory(name='%s'); "
             "rt.unregister(s._name, 'shared_memory'); "
             "assert s.size == 1000, s.size; assert bytes(s.buf[:12]) == b'written by C'; "
             "s.buf[:3] = b'py!'; s.close()\"",
             mp_shm_name(s));
    assert_int_equal(system(cmd), 0);
    assert_memory_equal(mp_shm_buf(s), "py!", 3);
    TU_OK(mp_shm_unlink(s));
    mp_shm_free(s);
    assert_int_equal(leftovers(), 0);
}

static void test_shm_c_reads_what_python_wrote(void **state)
{
    (void)state;
    if (!have_python())
        skip();
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "python3 -c \"" PY_PRELUDE "s = sm.SharedMemory(name='%s', create=True, size=3000); "
             "s.buf[:14] = b'written by py\\0'; rt.unregister(s._name, 'shared_memory'); s.close()\"",
             name_of("py2c"));
    assert_int_equal(system(cmd), 0);
    mp_shm *s;
    TU_OK(mp_shm_new(&s, name_of("py2c"), 0, 0));
    assert_true(mp_shm_size(s) >= 3000);                     /* Python may round up to a page */
    assert_string_equal(mp_shm_buf(s), "written by py");
    TU_OK(mp_shm_unlink(s));
    mp_shm_free(s);
    assert_int_equal(leftovers(), 0);
}

static int remove_leftovers(void **state)
{
    (void)state;
    DIR *d = opendir("/dev/shm");
    for (struct dirent *e; d && (e = readdir(d));)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
            shm_unlink(e->d_name);
    if (d)
        closedir(d);
    return 0;
}

int main(void)
{
    tu_watchdog(60);
    snprintf(prefix, sizeof prefix, "mptest_%d_", (int)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shm_new_refuses_bad_arguments),
        cmocka_unit_test(test_shm_open_of_missing_name_returns_enoent),
        cmocka_unit_test(test_shm_bigger_than_dev_shm_is_enospc),
        cmocka_unit_test(test_shm_create_then_open_share_one_buffer),
        cmocka_unit_test(test_shm_without_a_name_gets_a_python_style_one),
        cmocka_unit_test(test_shm_name_keeps_a_leading_slash_the_caller_gave),
        cmocka_unit_test(test_shm_is_shared_with_a_forked_child),
        cmocka_unit_test(test_shm_handle_reaches_children_under_every_start_method),
        cmocka_unit_test(test_shm_name_made_again_is_not_mapped_as_the_handle),
        cmocka_unit_test(test_shm_handle_made_where_a_freed_one_was_maps_its_own_segment),
        cmocka_unit_test(test_shm_opened_while_its_maker_sizes_it_waits_for_the_size),
        cmocka_unit_test(test_shm_python_reads_what_c_wrote),
        cmocka_unit_test(test_shm_c_reads_what_python_wrote),
    };
    /* a failed test must not leave its segment behind either */
    return cmocka_run_group_tests(tests, NULL, remove_leftovers);
}
