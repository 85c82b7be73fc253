/* pyobj.h - what the files of the Python protocol share: the object table,
 * a method call, its replies, and the per-type method tables.
 *
 * pyobj.c keeps the table (idents to objects with reference counts) and the
 * typeids; pycall.c reads a call's arguments and writes its reply; each of
 * pydict.c, pylist.c, pyqueue.c, pysync.c and pyarray.c defines one struct
 * pyclass per type: a table of methods sorted by name, each saying which
 * mutex it runs under, so pyproto.c dispatches a call by looking its name up.
 */
#ifndef MPROC_MANAGER_PYOBJ_H
#define MPROC_MANAGER_PYOBJ_H

#include "manager/pickle.h"
#include "manager/pyvalue.h"
#include "manager/store.h"
#include "manager/wire.h"

#include <stdatomic.h>
#include <time.h>

enum {
    PY_BUCKETS = 1024,
    PY_MAX_IDENT = 8 + MSG_MAX_NAME,
    PY_SLICE_MS = 100,
    PY_MAX_ARRAY = 1 << 20,
};
/* What Value, Array and iterator objects may hold together (the store's
 * objects have the store's budget). */
#define PY_MAX_BYTES ((size_t)256 * 1024 * 1024)

enum pytype {
    PT_DICT, PT_LIST, PT_QUEUE, PT_LOCK, PT_NAMESPACE,          /* in the store */
    PT_RLOCK, PT_SEM, PT_BSEM, PT_EVENT, PT_COND, PT_BARRIER, PT_VALUE, PT_ARRAY, PT_ITER,
    PT_COUNT,
};

/* A typeid a client may create: its type, the methods create and
 * get_methods report, and for get_*('name') the ident prefix of the named
 * object (else 0). */
struct pytypeinfo {
    const char *typeid;
    enum pytype t;
    const char *const *exposed;
    char named;
};

struct cwaiter {                 /* a Condition.wait in progress */
    struct cwaiter *next;
    bool notified;
};

struct pyobj {
    struct pyobj *next;          /* hash chain */
    char ident[PY_MAX_IDENT + 1];
    size_t idlen;
    const struct pytypeinfo *ti;
    long refs;
    int holds;                   /* requests using it now */
    bool gone;                   /* out of the table: freed at holds == 0 */
    bool pinned;                 /* a proxy of it is stored here: kept with no references */
    uint8_t sname[MSG_MAX_NAME]; /* its name in the store */
    size_t snlen;
    pthread_cond_t cond;
    struct store_owner *owner;   /* RLock, Condition */
    int64_t count, max;          /* RLock depth; semaphore value, bound; barrier parties */
    int64_t unfinished;          /* queue: puts not yet task_done */
    int64_t maxsize;             /* queue */
    bool flag;                   /* Event; Barrier: broken */
    uint64_t gen, broken_upto;   /* Barrier */
    int64_t waiting;             /* Barrier */
    struct cwaiter *cwaiters;    /* Condition */
    struct sval val;             /* Value */
    char typecode;               /* Value, Array */
    struct sval *items;          /* Array */
    size_t nitems;
    mp_buf keys;                 /* Iterator: encoded keys, each followed by NUL */
    size_t at;
    size_t charged;              /* bytes counted against PY_MAX_BYTES */
};

struct pyreg {
    struct store *store;
    pthread_mutex_t mu;
    struct pyobj *buckets[PY_BUCKETS];
    uint64_t next_id;
    long nobjects;
    size_t bytes;                /* charged by all objects, at most PY_MAX_BYTES */
    _Atomic int serving;         /* connections serving proxies now */
    int ncpu;
};

struct pyconn {
    struct pyreg *reg;
    struct store_owner *owner;
    struct wire *w;
    mp_buf out, tmp, tmp2;
    mp_buf item;                 /* the queue item this reply carries, to put back if it is not sent */
    struct mval item_v, item_queue;
    bool has_item;
    bool want_repr, wrapped;     /* a __repr__/__str__ call, answered as repr(#GETVALUE) */
    char repr_typecode;          /* ... or, for a Value, as Python's Value.__repr__ writes it */
    struct pk_arena arena;
    struct pk_writer pw;
    bool *shutdown;
};

/* One method call: the object, the method's name and its arguments. */
struct pycall {
    struct pyconn *cx;
    struct pyobj *o;
    const struct pk_node *m, *args, *kwds;
    char why[96];                /* what a method found wrong, in Python's words ("": nothing) */
    bool why_value;              /* ... a ValueError's, not a TypeError's */
};

/* The mutex a method runs under, taken and released around it by the
 * dispatcher; HOLD_NONE methods wait, so they lock for themselves. */
enum pyhold { HOLD_NONE, HOLD_STORE, HOLD_TABLE };

/* kw: the keywords Python's method takes, checked before it runs (a
 * keyword it does not take is Python's TypeError, and the call does
 * nothing). NULL: none, a builtin's ("dict.get() takes no keyword
 * arguments"); "*": any (dict.update); "py a b": a Python function's
 * parameters ("Queue.get() got an unexpected keyword argument 'x'"); "c a
 * b": a builtin's that takes keywords ("'x' is an invalid keyword argument
 * for acquire()"). */
struct pymethod {
    const char *name;
    enum pyhold hold;
    void (*run)(struct pycall *c);
    const char *kw;
};

struct pyclass {
    const struct pymethod *methods;      /* sorted by name (strcmp) */
    size_t nmethods;
    /* Sets up a new object from create's arguments: NULL, or a message
     * for TypeError. NULL: nothing to set up. */
    const char *(*init)(struct pycall *c);
    const char *missing;                 /* the traceback for an exposed method not run here */
    const char *pyname;                  /* Python's name of the class, for messages */
};

extern const struct pyclass py_dict_class, py_namespace_class, py_iter_class, py_list_class,
    py_queue_class, py_lock_class, py_rlock_class, py_sem_class, py_cond_class, py_event_class,
    py_barrier_class, py_value_class, py_array_class;

/* ------------------------------------------------------------------ pyobj.c */

const struct pytypeinfo *py_typeinfo(const struct pk_node *typeid);
extern const struct pytypeinfo PY_ITERATOR;
const struct pyclass *py_class(enum pytype t);
/* The method of class cls named m, or NULL. */
const struct pymethod *py_method(const struct pyclass *cls, const struct pk_node *m);
/* Whether every class's methods are in strictly increasing order (pyreg_new). */
bool py_classes_sorted(void);

struct pyobj **pyobj_slot(struct pyreg *r, const char *id, size_t n);
/* A new object in the table with one reference; r->mu held. */
struct pyobj *pyobj_add(struct pyreg *r, const struct pytypeinfo *ti, const char *id, size_t idlen);
/* The object with ident id, held (not freed) until pyobj_release, or NULL. */
struct pyobj *pyobj_hold(struct pyreg *r, const struct pk_node *id);
void pyobj_release(struct pyreg *r, struct pyobj *o);
/* Drops one reference; the last one of an unnamed object takes it out. */
int pyobj_decref(struct pyreg *r, const struct pk_node *id);
/* Counts n more bytes (or fewer, when negative) for o: false, and nothing
 * counted, past PY_MAX_BYTES. r->mu held. */
bool pyobj_charge(struct pyreg *r, struct pyobj *o, int64_t n);
/* Objects with references; with info, a line for each as debug_info has. */
long pyobj_count(struct pyreg *r, mp_buf *info);

struct timespec py_mono_in(double s);
double py_mono_left(const struct timespec *t);
/* The deadline a timeout argument asks for: false when there is none. */
bool py_deadline_of(const struct pk_node *timeout, struct timespec *at);
bool py_peer_alive(struct pyconn *cx);
/* One slice of waiting on o->cond (r->mu held): MP_ETIMEDOUT once the
 * deadline has passed, MP_EBROKEN once the client has gone, else 0. */
int pyobj_wait(struct pyconn *cx, struct pyobj *o, const struct timespec *until);

/* ------------------------------------------------------------------ pycall.c */

/* Argument i (positional) or name (keyword), or NULL. */
const struct pk_node *py_arg(const struct pycall *c, uint32_t i, const char *name);
bool py_truthy(const struct pk_node *n, bool dflt);
/* Python's name for the type of a node ("str", "float", ...; "object" for instances). */
const char *py_type_name(const struct pk_node *n);
/* An int node (int, bool, or one past int64, which is clamped to
 * INT64_MIN or INT64_MAX as Python clamps slice bounds) as *v: false for
 * any other node. */
bool py_int_clamped(const struct pk_node *n, int64_t *v);
/* A builtins.slice(start, stop, step) node resolved against len, as
 * slice.indices does: false if n is no slice (or its step is 0). */
bool py_slice_of(const struct pk_node *n, int64_t len, int64_t *start, int64_t *stop, int64_t *step);
/* Whether the call has min..max positional arguments; else writes the
 * TypeError Python's builtins raise ("get expected at least 1 argument, got 0"). */
bool py_nargs(struct pycall *c, const char *name, uint32_t min, uint32_t max);
/* Positional argument i, or NULL (a node the writer may re-write). */
static inline struct pk_node *py_pos(const struct pycall *c, uint32_t i) { return (struct pk_node *)py_arg(c, i, NULL); }
static inline bool str_is(const struct pk_node *n, const char *s) { return pk_is_str(n, s); }
static inline bool is_number(const struct pk_node *n)
{
    return n && (n->kind == PK_INT || n->kind == PK_BOOL || n->kind == PK_FLOAT);
}
static inline double number(const struct pk_node *n) { return n->kind == PK_FLOAT ? n->f : (double)n->i; }
static inline bool is_int(const struct pk_node *n) { return n && (n->kind == PK_INT || n->kind == PK_BOOL); }
static inline struct mval mint(int64_t i) { return (struct mval){ .type = MV_INT, .i = i }; }
static inline struct mval mfloat(double f) { return (struct mval){ .type = MV_FLOAT, .f = f }; }
static inline struct mval obj_name(const struct pyobj *o)
{
    return (struct mval){ .type = MV_TEXT, .p = o->sname, .len = o->snlen };
}

/* A reply's kind; for a __repr__ call, a #RETURN value goes out as
 * builtins.repr(value) (a Value's as operator.mod("Value(%r, %r)",
 * (typecode, value))), which the client works out on its own copy. */
void py_reply_begin(struct pyconn *cx, const char *kind);
void py_reply_end(struct pyconn *cx);
void py_traceback(struct pyconn *cx, const char *fmt, const char *detail);
void py_ret_none(struct pyconn *cx);
void py_ret_bool(struct pyconn *cx, bool v);
void py_ret_int(struct pyconn *cx, int64_t v);
void py_ret_value(struct pyconn *cx, const struct mval *v);
void py_ret_node(struct pyconn *cx, struct pk_node *n);
/* ('#ERROR', module.name(*args)) with args a message, a node, or nothing. */
void py_raise(struct pyconn *cx, const char *module, const char *name, const char *msg, struct pk_node *n);
void py_raise_msg(struct pyconn *cx, const char *name, const char *msg);
/* Whether c's keywords are ones pm takes (else raises Python's TypeError). */
bool py_kwds_ok(struct pycall *c, const struct pyclass *cls, const struct pymethod *pm);
/* name(fmt % repr(n)) as Python words it, where the server can write n's
 * repr (small ints, str, None, bool); else name(other). */
void py_raise_about(struct pyconn *cx, const char *name, const char *fmt, const struct pk_node *n, const char *other);
/* A store status as the exception Python's server would raise. */
void py_raise_status(struct pyconn *cx, int status);
void py_write_exposed(struct pk_writer *w, const char *const *e);

/* Runs op on the call's object with up to two arguments, store mutex held. */
int py_sx(struct pycall *c, int64_t op, const struct mval *a, const struct mval *b, struct sreply *r);
/* A store op that may wait (queue put/get, lock acquire), repeated in
 * slices until the deadline (none: forever, block false: once) while the
 * client is there. Returns with the store mutex held, like store_exec. */
int py_sx_wait(struct pycall *c, int64_t op, const struct mval *item, bool block, const struct timespec *until,
               struct sreply *r);
/* A timeout argument: None or absent (no deadline) or a number of
 * seconds; anything else writes the TypeError whose message is bad with
 * the argument's type name, and gives false. */
bool py_timeout_of(struct pycall *c, const struct pk_node *t, const char *bad, bool *has, struct timespec *until);
/* acquire(blocking=True, timeout=-1) as threading.Lock reads it (sem: as
 * threading.Semaphore does); false when an error reply was written. */
bool py_acquire_args(struct pycall *c, bool sem, bool *blocking, bool *has_deadline, struct timespec *until);

/* ------------------------------------------------------------------ shared by the types */

/* The object of this table a proxy node (a request's RebuildProxy) refers
 * to, held, or NULL. The request pinned it (pyproto.c), so its release
 * never frees it, even under the store mutex. */
struct pyobj *py_proxy_hold(struct pyreg *r, const struct pk_node *n);

/* Stores every pair of a dict node or list of pairs into the call's dict. */
int pydict_update_from(struct pycall *c, struct pk_node *src);
/* Writes keys(), values() or items() as a list, or the whole dict. */
int pydict_body(struct pycall *c, bool keys, bool values, bool as_dict, bool fresh);
int pylist_append(struct pycall *c, struct pk_node *n);
/* Appends the items list(src) would give, for the sources the server can
 * iterate without running code: 0, MP_ETYPE (another source) or a store error. */
int pylist_extend_from(struct pycall *c, struct pk_node *src);
/* Frees an RLock or a Condition's lock and wakes its waiters; r->mu held. */
void pysync_release_all(struct pyobj *o);

#endif
