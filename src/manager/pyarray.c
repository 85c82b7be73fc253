/* pyarray.c - Value and Array for Python's clients (pyobj.h).
 *
 * Both live in the object table, under its mutex: a Value holds one value
 * by pyvalue.c's table, an Array a fixed number of numbers of one typecode.
 * What they hold counts against PY_MAX_BYTES, so no client can make the
 * server allocate without bound.
 */
#include "manager/pyobj.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void value_get(struct pycall *c)
{
    struct mval v = pv_sval_view(&c->o->val);
    py_ret_value(c->cx, &v);
}

static void value_set(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct pyobj *o = c->o;
    struct pk_node *value = (struct pk_node *)py_arg(c, 0, "value");
    struct mval v;
    int rc;
    if (!value) {
        py_traceback(cx, "AttributeError: method not supported", NULL);
        return;
    }
    if ((rc = pv_value(value, &cx->tmp2, false, &v)) == 0 &&
        !pyobj_charge(cx->reg, o, (int64_t)v.len - (int64_t)o->val.b.len))
        rc = MP_ENOMEM;
    if (rc < 0 || (rc = pv_sval_set(&o->val, &v)) < 0)
        py_raise_status(cx, rc);
    else
        py_ret_none(cx);
}

static const char *value_init(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    const struct pk_node *tc = py_arg(c, 0, "typecode"), *v = py_arg(c, 1, "value");
    struct mval sv;
    if (!v || pv_value((struct pk_node *)v, &cx->tmp2, false, &sv) < 0)
        return "Value() takes a typecode and a value";
    pthread_mutex_lock(&cx->reg->mu);
    bool room = pyobj_charge(cx->reg, c->o, (int64_t)sv.len);
    pthread_mutex_unlock(&cx->reg->mu);
    if (!room || pv_sval_set(&c->o->val, &sv) < 0)
        return "mproc-manager: the server's memory budget is spent";
    c->o->typecode = tc && tc->kind == PK_STR && tc->len == 1 ? (char)tc->p[0] : 'O';
    return NULL;
}

static const struct pymethod VALUE_METHODS[] = {
    { "#GETVALUE", HOLD_TABLE, value_get, NULL },
    { "get", HOLD_TABLE, value_get, "py" },
    { "set", HOLD_TABLE, value_set, "py value" },
};
const struct pyclass py_value_class = { VALUE_METHODS, sizeof VALUE_METHODS / sizeof VALUE_METHODS[0], value_init,
                                        "AttributeError: method not supported", "Value" };

/* ------------------------------------------------------------------ Array */

static bool array_float(const struct pyobj *o) { return o->typecode == 'f' || o->typecode == 'd'; }

/* Why x cannot be an item of an array of typecode tc, in the words of
 * CPython's array module (OverflowError or TypeError), or NULL. */
static const char *item_error(char tc, const struct pk_node *x, const char **exc, char *msg, size_t cap)
{
    *exc = "TypeError";
    if (tc == 'f' || tc == 'd') {
        if (is_number(x))
            return NULL;
        snprintf(msg, cap, "must be real number, not %s", py_type_name(x));
        return msg;
    }
    if (!x || (!is_int(x) && x->kind != PK_BIGINT)) {
        snprintf(msg, cap, "'%s' object cannot be interpreted as an integer", py_type_name(x));
        return msg;
    }
    *exc = "OverflowError";
    bool neg = x->kind == PK_BIGINT ? x->len && (x->p[x->len - 1] & 0x80) : x->i < 0;
    if (x->kind == PK_BIGINT)
        return tc == 'q' || (tc == 'Q' && !neg) ? "int too big to convert"
             : tc == 'Q' ? "can't convert negative int to unsigned"
             : (tc == 'I' || tc == 'L') && neg ? "can't convert negative value to unsigned int"
             : tc == 'I' || tc == 'L' ? "Python int too large to convert to C unsigned long"
             : "Python int too large to convert to C long";
    int64_t v = x->i;
    static const struct {
        char tc;
        int64_t lo, hi;
        const char *below, *above;
    } RANGES[] = {
        { 'b', -32768, 32767, "signed short integer is less than minimum", "signed short integer is greater than maximum" },
        { 'b', -128, 127, "signed char is less than minimum", "signed char is greater than maximum" },
        { 'B', 0, 255, "unsigned byte integer is less than minimum", "unsigned byte integer is greater than maximum" },
        { 'h', -32768, 32767, "signed short integer is less than minimum", "signed short integer is greater than maximum" },
        { 'H', INT32_MIN, INT32_MAX, "signed integer is less than minimum", "signed integer is greater than maximum" },
        { 'H', 0, 65535, "unsigned short is less than minimum", "unsigned short is greater than maximum" },
        { 'i', INT32_MIN, INT32_MAX, "signed integer is less than minimum", "signed integer is greater than maximum" },
        { 'I', 0, UINT32_MAX, "can't convert negative value to unsigned int", "unsigned int is greater than maximum" },
        { 'L', 0, INT64_MAX, "can't convert negative value to unsigned int", NULL },
        { 'Q', 0, INT64_MAX, "can't convert negative int to unsigned", NULL },
    };
    for (size_t k = 0; k < sizeof RANGES / sizeof RANGES[0]; k++)
        if (RANGES[k].tc == tc && (v < RANGES[k].lo || v > RANGES[k].hi))
            return v < RANGES[k].lo ? RANGES[k].below : RANGES[k].above;
    return NULL;
}

/* The index argument, from the end when negative: false when an error
 * reply was written. */
static bool array_index(struct pycall *c, size_t *i, bool assign)
{
    const struct pk_node *a0 = py_arg(c, 0, NULL);
    if (!is_int(a0)) {
        py_raise_msg(c->cx, "TypeError", "array indices must be integers");
        return false;
    }
    int64_t at = a0->i < 0 ? a0->i + (int64_t)c->o->nitems : a0->i;
    if (at < 0 || (size_t)at >= c->o->nitems) {
        py_raise_msg(c->cx, "IndexError", assign ? "array assignment index out of range" : "array index out of range");
        return false;
    }
    *i = (size_t)at;
    return true;
}

static void array_len(struct pycall *c) { py_ret_int(c->cx, (int64_t)c->o->nitems); }

/* array.array(typecode, [items start, start + step, ... before stop]). */
static void array_write(struct pycall *c, int64_t start, int64_t stop, int64_t step)
{
    struct pyconn *cx = c->cx;
    struct pyobj *o = c->o;
    char tc[2] = { o->typecode, 0 };
    py_reply_begin(cx, "#RETURN");
    pk_global(&cx->pw, "array", "array");
    pk_cstr(&cx->pw, tc);
    pk_empty_list(&cx->pw);
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
        struct mval v = pv_sval_view(&o->items[k]);
        pk_mark(&cx->pw);
        pv_write(&cx->pw, &v);
        pk_appends(&cx->pw);
    }
    pk_tuple(&cx->pw, 2);
    pk_reduce(&cx->pw);
    py_reply_end(cx);
}

static void array_getvalue(struct pycall *c) { array_write(c, 0, (int64_t)c->o->nitems, 1); }

static void array_getitem(struct pycall *c)
{
    size_t i;
    int64_t start, stop, step;
    if (py_slice_of(py_arg(c, 0, NULL), (int64_t)c->o->nitems, &start, &stop, &step)) {
        array_write(c, start, stop, step);
        return;
    }
    if (!array_index(c, &i, false))
        return;
    struct mval v = pv_sval_view(&c->o->items[i]);
    py_ret_value(c->cx, &v);
}

static void array_setitem(struct pycall *c)
{
    const struct pk_node *a1 = py_arg(c, 1, NULL);
    bool fl = array_float(c->o);
    size_t i;
    const char *exc, *why;
    char msg[96];
    if (!array_index(c, &i, true))
        return;
    if ((why = item_error(c->o->typecode, a1, &exc, msg, sizeof msg))) {
        py_raise_msg(c->cx, exc, why);
        return;
    }
    struct mval v = fl ? mfloat(number(a1)) : mint(a1->i);
    pv_sval_set(&c->o->items[i], &v);
    py_ret_none(c->cx);
}

static const char *array_init(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct pyobj *o = c->o;
    const struct pk_node *a0 = py_arg(c, 0, NULL), *a1 = py_arg(c, 1, NULL);
    if (!a0 || a0->kind != PK_STR || a0->len != 1 || !strchr("bBhHiIlLqQfd", a0->p[0]))
        return "mproc-manager: Array() takes a numeric typecode";
    o->typecode = (char)a0->p[0];
    bool fl = array_float(o);
    if (is_int(a1) && a1->i >= 0 && a1->i <= PY_MAX_ARRAY)
        o->nitems = (size_t)a1->i;
    else if (a1 && (a1->kind == PK_LIST || a1->kind == PK_TUPLE) && a1->n <= PY_MAX_ARRAY)
        o->nitems = a1->n;
    else
        return "Array() takes a size or a sequence of numbers";
    pthread_mutex_lock(&cx->reg->mu);
    bool room = pyobj_charge(cx->reg, o, (int64_t)(o->nitems * sizeof *o->items));
    pthread_mutex_unlock(&cx->reg->mu);
    o->items = room ? calloc(o->nitems ? o->nitems : 1, sizeof *o->items) : NULL;
    if (!o->items) {
        o->nitems = 0;
        return "mproc-manager: the server's memory budget is spent";
    }
    for (size_t i = 0; i < o->nitems; i++) {
        const struct pk_node *x = is_int(a1) ? NULL : a1->kids[i];
        char msg[96];
        const char *exc, *why = x ? item_error(o->typecode, x, &exc, msg, sizeof msg) : NULL;
        if (why)
            return exc[0] == 'O' ? why : "mproc-manager: Array() takes numbers of its typecode";
        o->items[i] = (struct sval){ .type = fl ? MV_FLOAT : MV_INT, .i = x && !fl ? x->i : 0,
                                     .f = x && fl ? number(x) : 0 };
    }
    return NULL;
}

static const struct pymethod ARRAY_METHODS[] = {
    { "#GETVALUE", HOLD_TABLE, array_getvalue, NULL },
    { "__getitem__", HOLD_TABLE, array_getitem, NULL },
    { "__len__", HOLD_TABLE, array_len, NULL },
    { "__setitem__", HOLD_TABLE, array_setitem, NULL },
};
const struct pyclass py_array_class = { ARRAY_METHODS, sizeof ARRAY_METHODS / sizeof ARRAY_METHODS[0], array_init,
                                        "AttributeError: method not supported", "array" };
