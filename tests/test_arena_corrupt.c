/* test_arena_corrupt.c - a process that writes past its block into the
 * arena's bookkeeping makes the arena refuse further allocations; it never
 * makes the allocator write through a wild link (MPROC_WHITEBOX).
 *
 * Its own binary: the arena is the family's, so once a case has corrupted
 * it, nothing else in this process could use it. The block header's layout
 * (arena.c: magic, flags, size, prev_size, next_free, ...) is written out
 * here; the test fails at its first check if that layout moves. */
#include "testutil.h"

#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define BIG ((size_t)64 << 10)         /* above the small-block cache: the lists */
#define OFF_SIZE 8                     /* struct block: size */
#define OFF_NEXT_FREE 24               /* struct block: next_free */

static uint64_t *header_word(void *payload, size_t off)
{
    return (uint64_t *)(void *)((char *)payload - ARENA_BLOCK_HEADER + off);
}

/* A free block between two blocks in use: it sits alone at the head of its
 * list. Its next link is then set far outside the arena, as a stray write
 * past the block before it would. Taking that block must not follow the
 * link (before, the write through it was a SIGSEGV, or worse, a write into
 * some other mapping); the arena is marked corrupt, arena_check says so,
 * and later allocations fail instead of trusting the lists. */
static void test_a_wild_link_is_never_followed(void **state)
{
    (void)state;
    void *a = arena_alloc(BIG), *b = arena_alloc(BIG), *c = arena_alloc(BIG);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_true(arena_check(NULL));
    size_t size = arena_block_size(b);
    arena_free(b);
    assert_true(arena_check(NULL));
    assert_int_equal(*header_word(b, OFF_NEXT_FREE), 0);   /* alone in its list */
    assert_true(*header_word(b, OFF_SIZE) >= size);         /* the layout still holds */

    *header_word(b, OFF_NEXT_FREE) = (uint64_t)1 << 50;   /* the stray write */
    void *again = arena_alloc(BIG);                         /* takes the block, skips the link */
    assert_false(arena_check(NULL));
    assert_null(arena_alloc(BIG));
    assert_null(arena_alloc(3 * BIG));
    arena_free(again);                                      /* no crash either way */
    arena_free(a);
    arena_free(c);
    assert_false(arena_check(NULL));
}

int main(void)
{
    setenv("MPROC_ARENA_SIZE", "64M", 1);
    tu_watchdog(60);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_wild_link_is_never_followed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
