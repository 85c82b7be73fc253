/* pickle.h - a safe subset of Python's pickle, for the manager's Python
 * protocol (pyproto.c).
 *
 * The reader turns a pickle (protocols 2-5) into a tree of nodes and never
 * runs anything: a global is two names, a REDUCE or NEWOBJ is an "object"
 * node holding its callable, its arguments and the BUILD/APPEND/SETITEM
 * steps applied to it later. The server interprets only the few nodes it
 * needs (strings, numbers, tuples, dicts, the Token class); everything else
 * it writes back out, unexecuted, as a pickle of its own (an opaque value).
 * Nodes, memo entries, nesting depth and total memory are bounded; past a
 * bound, or at any opcode outside the subset, the reader fails with a
 * message saying which.
 *
 * The writer produces protocol-4 pickles: replies built from scalars,
 * tuples, lists, dicts and REDUCE of named classes (exceptions, Token), and
 * any node tree the reader made.
 */
#ifndef MPROC_MANAGER_PICKLE_H
#define MPROC_MANAGER_PICKLE_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>

enum {
    PK_MAX_NODES = 1 << 18,           /* nodes in one pickle */
    PK_MAX_MEMO = 1 << 18,            /* memo indices */
    PK_MAX_DEPTH = 100,               /* nesting, for the reader's and writer's recursion */
    PK_MAX_STACK = 1 << 16,           /* the unpickler's stack and marks */
    PK_MAX_ARENA = 64 * 1024 * 1024,  /* bytes of nodes and their arrays */
};

enum pk_kind {
    PK_NONE, PK_BOOL, PK_INT, PK_BIGINT, PK_FLOAT, PK_BYTES, PK_STR, PK_BYTEARRAY,
    PK_TUPLE, PK_LIST, PK_DICT, PK_SET, PK_FROZENSET, PK_GLOBAL, PK_OBJECT,
};

struct pk_node;

/* A step applied to an object after it was made: BUILD(a), APPEND(a), SETITEM(a, b). */
struct pk_step {
    uint8_t op;
    struct pk_node *a, *b;
};

struct pk_node {
    enum pk_kind kind;
    uint8_t op;                  /* PK_OBJECT: REDUCE, NEWOBJ or NEWOBJ_EX */
    uint16_t depth;
    int64_t i;                   /* PK_INT, PK_BOOL */
    double f;                    /* PK_FLOAT */
    const uint8_t *p;            /* bytes, UTF-8 str, bigint (little-endian), global module */
    size_t len;
    const uint8_t *p2;           /* global name */
    size_t len2;
    struct pk_node **kids;       /* tuple/list/set items, dict k,v,k,v; object: callable, args[, kwargs] */
    uint32_t n, cap;
    struct pk_step *steps;       /* PK_OBJECT */
    uint32_t nsteps, capsteps;
    uint32_t memo, memo_gen;     /* the writer's memo index + 1 in pass memo_gen */
    bool busy;                   /* the writer is inside this tuple */
};

/* Nodes, arrays and strings of one decoded pickle, freed together. */
struct pk_arena {
    struct pk_chunk *chunks;
    size_t used, nodes;
};

void pk_arena_free(struct pk_arena *a);

/* Decodes data into *out (pointing into data and a). 0, or MP_EPROTO /
 * MP_ETOOBIG with *why naming the cause. */
int pk_read(struct pk_arena *a, const uint8_t *data, size_t len, struct pk_node **out, const char **why);

/* A node's text when it is a str, else NULL. */
bool pk_is_str(const struct pk_node *n, const char *s);

/* ------------------------------------------------------------------ writer */

struct pk_writer {
    mp_buf *buf;
    uint32_t next_memo, gen;
    int depth;
    int rc;                      /* the first error; later calls do nothing */
};

void pk_begin(struct pk_writer *w, mp_buf *buf);   /* empties buf, writes PROTO 4 */
int pk_end(struct pk_writer *w);                   /* STOP; returns w->rc */
void pk_none(struct pk_writer *w);
void pk_bool(struct pk_writer *w, bool v);
void pk_int(struct pk_writer *w, int64_t v);
void pk_float(struct pk_writer *w, double v);
void pk_bytes(struct pk_writer *w, const void *p, size_t len);
void pk_str(struct pk_writer *w, const void *p, size_t len);
void pk_cstr(struct pk_writer *w, const char *s);
void pk_mark(struct pk_writer *w);
void pk_tuple(struct pk_writer *w, size_t n);      /* n items (0-3) written, or a mark and items */
void pk_tuple_mark(struct pk_writer *w);           /* closes pk_mark + items */
void pk_empty_list(struct pk_writer *w);
void pk_appends(struct pk_writer *w);              /* closes pk_mark + items */
void pk_empty_dict(struct pk_writer *w);
void pk_setitems(struct pk_writer *w);             /* closes pk_mark + k, v pairs */
void pk_global(struct pk_writer *w, const char *module, const char *name);
void pk_reduce(struct pk_writer *w);               /* callable, args tuple written */
void pk_build(struct pk_writer *w);                /* object, state written */
void pk_bigint(struct pk_writer *w, const void *p, size_t len);  /* little-endian two's complement */
/* Resets an arena for the next pickle, keeping one chunk. */
void pk_arena_reset(struct pk_arena *a);
/* The value of a pickle written separately, as pickle.loads(p): the client
 * unpickles it, the server never does. */
void pk_embedded(struct pk_writer *w, const void *p, size_t len);
/* Any node the reader made, with its sharing and cycles kept. */
void pk_node(struct pk_writer *w, struct pk_node *n);

#endif
