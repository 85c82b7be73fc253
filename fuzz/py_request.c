/* py_request.c - libFuzzer target: the pickle reader behind the manager's
 * Python protocol (src/manager/pickle.c), the writer that re-emits what it
 * read, and the value and key table (src/manager/pyvalue.c). Any bytes
 * must decode to a request or an error, never a crash, an out-of-bounds
 * read or unbounded memory (run under ASan/UBSan); and a dict key must
 * survive the trip to the store and back: key(read(write(key(x)))) ==
 * key(x), else the target traps. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "manager/pickle.h"
#include "manager/pyproto.h"
#include "manager/pyvalue.h"

/* The input as one pickle; if it is a key, its store form must come back
 * unchanged from the pickle the server writes for it (but for a key with
 * a NaN in it, which is a new key each time, as in Python). */
static void key_round_trip(const uint8_t *data, size_t size)
{
    struct pk_arena a = { 0 }, a2 = { 0 };
    struct pk_node *n, *back;
    const char *why;
    mp_buf k1 = { 0 }, k2 = { 0 }, out = { 0 };
    struct mval key, key2;
    if (pk_read(&a, data, size, &n, &why) == 0 && pv_key(n, &k1, &key) == 0) {
        struct pk_writer w;
        pk_begin(&w, &out);
        if (pv_key_write(&w, key.p, key.len, 0) != 0 || pk_end(&w) != 0)
            __builtin_trap();
        bool nan = memmem(key.p, key.len, "\xffn", 2) != NULL;
        if (pk_read(&a2, out.data, out.len, &back, &why) != 0 || pv_key(back, &k2, &key2) != 0 ||
            (!nan && (key2.len != key.len || memcmp(key2.p, key.p, key.len) != 0)))
            __builtin_trap();
    }
    mp_buf_free(&k1);
    mp_buf_free(&k2);
    mp_buf_free(&out);
    pk_arena_free(&a);
    pk_arena_free(&a2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    py_decode_request(data, size);
    key_round_trip(data, size);
    return 0;
}
