/* pydict.c - dict, Namespace and dict iterators for Python's clients
 * (pyobj.h).
 *
 * A dict and a Namespace are store dicts (a Namespace's attributes are its
 * keys), so C clients read what Python writes; keys cross by pyvalue.c's
 * table, where 1, 1.0 and True are one key. Python's dict methods that
 * make a new dict (copy, |, fromkeys) answer with a plain dict the client
 * unpickles; __iter__ answers with an iterator proxy over a snapshot of the
 * keys, kept in the object table.
 */
#include "manager/pyobj.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static bool unhashable(const struct pk_node *key)
{
    return key && (key->kind == PK_LIST || key->kind == PK_DICT || key->kind == PK_SET || key->kind == PK_BYTEARRAY);
}

static void raise_key(struct pyconn *cx, int rc, struct pk_node *key)
{
    char msg[64];
    if (unhashable(key))
        snprintf(msg, sizeof msg, "unhashable type: '%s'", py_type_name(key));
    if (rc == MP_ETYPE && unhashable(key))
        py_raise_msg(cx, "TypeError", msg);
    else if (rc == MP_ETYPE)
        py_raise_msg(cx, "TypeError", "mproc-manager: dict keys are str, bytes, int, float, bool, None or tuples of these");
    else if (rc == MP_ENOTFOUND)
        py_raise(cx, "builtins", "KeyError", NULL, key);
    else
        py_raise_status(cx, rc);
}

/* Stores one pair into the call's dict. */
static int dict_set_pair(struct pycall *c, struct pk_node *key, struct pk_node *value)
{
    struct mval k, v;
    struct sreply r;
    int rc = pv_key(key, &c->cx->tmp, &k);
    if (rc == 0)
        rc = pv_value(value, &c->cx->tmp2, false, &v);
    if (rc == 0)
        rc = py_sx(c, OP_DICT_SET, &k, &v, &r);
    return rc < 0 ? rc : 0;
}

/* Stores every pair of dict from into the call's dict, store mutex held. */
static int dict_update_from_dict(struct pycall *c, struct pyobj *from)
{
    struct pycall src = { .cx = c->cx, .o = from };
    struct sreply kr, r, w;
    if (from == c->o)                   /* d.update(d) changes nothing */
        return 0;
    int rc = py_sx(&src, OP_DICT_KEYS, NULL, NULL, &kr);
    for (const uint8_t *p = kr.v.p, *end = kr.v.p + (rc == 0 ? kr.v.len : 0); p < end && rc == 0;) {
        size_t kl = strlen((const char *)p);
        struct mval k = { .type = MV_TEXT, .p = p, .len = kl };
        if ((rc = py_sx(&src, OP_DICT_GET, &k, NULL, &r)) == 0) {
            struct mval v = r.v;
            rc = py_sx(c, OP_DICT_SET, &k, &v, &w);
        }
        p += kl + 1;
    }
    store_release(&kr);
    return rc;
}

int pydict_update_from(struct pycall *c, struct pk_node *src)
{
    int rc = 0;
    struct pyobj *proxied = py_proxy_hold(c->cx->reg, src);
    if (proxied) {                      /* a dict proxy: its pairs, as Python's server reads them */
        rc = proxied->ti->t == PT_DICT ? dict_update_from_dict(c, proxied) : MP_ETYPE;
        pyobj_release(c->cx->reg, proxied);
        return rc;
    }
    if (src->kind == PK_DICT) {
        for (uint32_t i = 0; i + 1 < src->n && rc == 0; i += 2)
            rc = dict_set_pair(c, src->kids[i], src->kids[i + 1]);
        return rc;
    }
    if (src->kind != PK_LIST && src->kind != PK_TUPLE)
        return MP_ETYPE;
    for (uint32_t i = 0; i < src->n && rc == 0; i++) {
        struct pk_node *p = src->kids[i];
        bool seq = p->kind == PK_TUPLE || p->kind == PK_LIST;
        bool text = p->kind == PK_STR || p->kind == PK_BYTES;
        size_t len = seq ? p->n : text ? p->len : 0;
        for (size_t b = 0; p->kind == PK_STR && b < p->len; b++)
            len -= (p->p[b] & 0xC0) == 0x80;   /* characters, not bytes */
        if (!seq || p->n != 2) {        /* Python's words for what is wrong with it */
            if ((seq || text) && len != 2)
                snprintf(c->why, sizeof c->why, "dictionary update sequence element #%" PRIu32
                         " has length %zu; 2 is required", i, len);
            else if (!text)
                snprintf(c->why, sizeof c->why, "cannot convert dictionary update sequence "
                         "element #%" PRIu32 " to a sequence", i);
            c->why_value = seq || text;
            return MP_EINVAL;
        }
        rc = dict_set_pair(c, p->kids[0], p->kids[1]);
    }
    return rc;
}

int pydict_body(struct pycall *c, bool keys, bool values, bool as_dict, bool fresh)
{
    struct pyconn *cx = c->cx;
    struct sreply kr, r;
    int rc = py_sx(c, OP_DICT_KEYS, NULL, NULL, &kr);
    if (rc < 0)
        return rc;
    if (as_dict && fresh)
        pk_empty_dict(&cx->pw);
    else if (fresh)
        pk_empty_list(&cx->pw);
    const uint8_t *p = kr.v.p, *end = kr.v.p + kr.v.len;
    size_t batch = 0;
    while (p < end) {
        if (batch == 0)
            pk_mark(&cx->pw);
        size_t kl = strlen((const char *)p);
        struct mval k = { .type = MV_TEXT, .p = p, .len = kl };
        if (keys)
            pv_key_write(&cx->pw, p, kl, 0);
        if (values) {
            py_sx(c, OP_DICT_GET, &k, NULL, &r);
            pv_write(&cx->pw, &r.v);
        }
        if (keys && values && !as_dict)
            pk_tuple(&cx->pw, 2);
        p += kl + 1;
        if (++batch == 1000 || p >= end) {
            if (as_dict)
                pk_setitems(&cx->pw);
            else
                pk_appends(&cx->pw);
            batch = 0;
        }
    }
    store_release(&kr);
    return 0;
}

static void dict_write_all(struct pycall *c, bool keys, bool values, bool as_dict)
{
    py_reply_begin(c->cx, "#RETURN");
    int rc = pydict_body(c, keys, values, as_dict, true);
    if (rc < 0)
        py_raise_status(c->cx, rc);
    else
        py_reply_end(c->cx);
}

/* SETITEMS of a dict node's pairs onto the dict being written. */
static void pk_node_items(struct pk_writer *w, struct pk_node *d)
{
    if (!d->n)
        return;
    pk_mark(w);
    for (uint32_t i = 0; i < d->n; i++)
        pk_node(w, d->kids[i]);
    pk_setitems(w);
}

/* Looks the first argument up: 1 with its value in r, 0 when it is not
 * there (untyped_absent: nor can be, not being a key type), -1 when an
 * error reply was written. */
static int dict_lookup(struct pycall *c, bool untyped_absent, struct mval *k, struct sreply *r)
{
    struct pyconn *cx = c->cx;
    struct pk_node *a0 = py_pos(c, 0);
    int rc;
    if (!a0) {
        py_raise_msg(cx, "TypeError", "missing argument");
        return -1;
    }
    if ((rc = pv_key(a0, &cx->tmp, k)) < 0) {
        if (untyped_absent && rc == MP_ETYPE && !unhashable(a0))   /* Python hashes it: absent */
            return 0;
        raise_key(cx, rc, a0);
        return -1;
    }
    if ((rc = py_sx(c, OP_DICT_GET, k, NULL, r)) == MP_ENOTFOUND)
        return 0;
    if (rc < 0) {
        py_raise_status(cx, rc);
        return -1;
    }
    return 1;
}

static void dict_getitem(struct pycall *c)
{
    struct mval k;
    struct sreply r;
    int found = dict_lookup(c, false, &k, &r);
    if (found == 0)
        py_raise(c->cx, "builtins", "KeyError", NULL, py_pos(c, 0));
    else if (found > 0)
        py_ret_value(c->cx, &r.v);
}

static void dict_get(struct pycall *c)
{
    struct mval k;
    struct sreply r;
    if (!py_nargs(c, "get", 1, 2))
        return;
    int found = dict_lookup(c, false, &k, &r);
    if (found == 0)
        py_ret_node(c->cx, py_pos(c, 1));
    else if (found > 0)
        py_ret_value(c->cx, &r.v);
}

static void dict_contains(struct pycall *c)
{
    struct mval k;
    struct sreply r;
    int found = dict_lookup(c, true, &k, &r);
    if (found >= 0)
        py_ret_bool(c->cx, found > 0);
}

static void dict_pop(struct pycall *c)
{
    struct mval k;
    struct sreply r;
    if (!py_nargs(c, "pop", 1, 2))
        return;
    int found = dict_lookup(c, false, &k, &r);
    if (found == 0 && py_pos(c, 1)) {
        py_ret_node(c->cx, py_pos(c, 1));
    } else if (found == 0) {
        py_raise(c->cx, "builtins", "KeyError", NULL, py_pos(c, 0));
    } else if (found > 0) {
        py_ret_value(c->cx, &r.v);
        py_sx(c, OP_DICT_DEL, &k, NULL, &r);
    }
}

static void dict_setdefault(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct mval k, v;
    struct sreply r;
    if (!py_nargs(c, "setdefault", 1, 2))
        return;
    int found = dict_lookup(c, false, &k, &r), rc;
    if (found > 0) {
        py_ret_value(cx, &r.v);
    } else if (found == 0) {
        struct pk_node none = { .kind = PK_NONE };
        struct pk_node *d = py_pos(c, 1) ? py_pos(c, 1) : &none;
        if ((rc = pv_value(d, &cx->tmp2, false, &v)) == 0)
            rc = py_sx(c, OP_DICT_SET, &k, &v, &r);
        if (rc < 0)
            py_raise_status(cx, rc);
        else
            py_ret_node(cx, d);
    }
}

static void dict_setitem(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0), *a1 = py_pos(c, 1);
    int rc;
    if (!a0 || !a1)
        py_raise_msg(c->cx, "TypeError", "__setitem__ takes a key and a value");
    else if ((rc = dict_set_pair(c, a0, a1)) < 0)
        raise_key(c->cx, rc, a0);
    else
        py_ret_none(c->cx);
}

static void dict_delitem(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0);
    struct mval k;
    struct sreply r;
    int rc;
    if (!a0)
        py_raise_msg(c->cx, "TypeError", "__delitem__ takes a key");
    else if ((rc = pv_key(a0, &c->cx->tmp, &k)) < 0 || (rc = py_sx(c, OP_DICT_DEL, &k, NULL, &r)) < 0)
        raise_key(c->cx, rc, a0);
    else
        py_ret_none(c->cx);
}

static void dict_len(struct pycall *c)
{
    struct sreply r;
    py_sx(c, OP_DICT_LEN, NULL, NULL, &r);
    py_ret_int(c->cx, r.v.i);
}

static void dict_clear(struct pycall *c)
{
    struct sreply r;
    py_sx(c, OP_DICT_CLEAR, NULL, NULL, &r);
    py_ret_none(c->cx);
}

/* self | other, or other | self (ror): a new plain dict. */
static void dict_or_either(struct pycall *c, bool ror)
{
    struct pyconn *cx = c->cx;
    struct pk_node *a0 = py_pos(c, 0);
    int rc;
    if (!a0 || a0->kind != PK_DICT) {
        py_traceback(cx, "TypeError: unsupported operand type for |", NULL);
        return;
    }
    py_reply_begin(cx, "#RETURN");
    if (ror) {
        pk_empty_dict(&cx->pw);
        pk_node_items(&cx->pw, a0);
    }
    if ((rc = pydict_body(c, true, true, true, !ror)) < 0) {
        py_raise_status(cx, rc);
        return;
    }
    if (!ror)
        pk_node_items(&cx->pw, a0);
    py_reply_end(cx);
}

static void dict_or(struct pycall *c) { dict_or_either(c, false); }
static void dict_ror(struct pycall *c) { dict_or_either(c, true); }

/* dict.fromkeys: touches nothing. */
static void dict_fromkeys(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct pk_node *a0 = py_pos(c, 0), *a1 = py_pos(c, 1);
    if (!a0 || (a0->kind != PK_LIST && a0->kind != PK_TUPLE)) {
        py_traceback(cx, "TypeError: mproc-manager: fromkeys takes a list or a tuple", NULL);
        return;
    }
    py_reply_begin(cx, "#RETURN");
    pk_empty_dict(&cx->pw);
    for (uint32_t i = 0; i < a0->n; i++) {
        pk_mark(&cx->pw);
        pk_node(&cx->pw, a0->kids[i]);
        if (a1)
            pk_node(&cx->pw, a1);
        else
            pk_none(&cx->pw);
        pk_setitems(&cx->pw);
    }
    py_reply_end(cx);
}

static void dict_update(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0);
    if (!py_nargs(c, "update", 0, 1))
        return;
    if (a0 && (a0->kind == PK_INT || a0->kind == PK_BOOL || a0->kind == PK_FLOAT || a0->kind == PK_NONE)) {
        char msg[64];
        snprintf(msg, sizeof msg, "'%s' object is not iterable", py_type_name(a0));
        py_raise_msg(c->cx, "TypeError", msg);
        return;
    }
    int rc = a0 ? pydict_update_from(c, a0) : 0;
    if (rc == 0 && c->kwds)
        rc = pydict_update_from(c, (struct pk_node *)c->kwds);
    if (rc == MP_EINVAL && c->why[0])
        py_raise_msg(c->cx, c->why_value ? "ValueError" : "TypeError", c->why);
    else if (rc < 0)
        raise_key(c->cx, rc, a0);
    else
        py_ret_none(c->cx);
}

static void dict_keys(struct pycall *c) { dict_write_all(c, true, false, false); }
static void dict_values(struct pycall *c) { dict_write_all(c, false, true, false); }
static void dict_items(struct pycall *c) { dict_write_all(c, true, true, false); }
static void dict_copy(struct pycall *c) { dict_write_all(c, true, true, true); }

static void dict_popitem(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct sreply r;
    int rc = py_sx(c, OP_DICT_KEYS, NULL, NULL, &r);
    if (rc < 0 || r.v.len == 0) {
        store_release(&r);
        if (rc < 0)
            py_raise_status(cx, rc);
        else
            py_raise_msg(cx, "KeyError", "popitem(): dictionary is empty");
        return;
    }
    const uint8_t *key = r.v.p;   /* the last key inserted: Python's LIFO order */
    for (const uint8_t *q = r.v.p; q < r.v.p + r.v.len; q += strlen((const char *)q) + 1)
        key = q;
    size_t kl = strlen((const char *)key);
    mp_buf_reserve(&cx->tmp, kl + 1);
    memcpy(cx->tmp.data, key, kl);
    store_release(&r);
    struct mval k = { .type = MV_TEXT, .p = cx->tmp.data, .len = kl };
    py_sx(c, OP_DICT_GET, &k, NULL, &r);
    py_reply_begin(cx, "#RETURN");
    pv_key_write(&cx->pw, k.p, k.len, 0);
    pv_write(&cx->pw, &r.v);
    pk_tuple(&cx->pw, 2);
    py_reply_end(cx);
    py_sx(c, OP_DICT_DEL, &k, NULL, &r);
}

/* An iterator proxy over the keys as they are now. */
static void dict_iter(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct pyreg *reg = cx->reg;
    struct sreply r;
    store_lock(reg->store);
    int rc = py_sx(c, OP_DICT_KEYS, NULL, NULL, &r);
    store_unlock(reg->store);
    if (rc < 0) {
        py_raise_status(cx, rc);
        store_release(&r);
        return;
    }
    char id[32];
    pthread_mutex_lock(&reg->mu);
    snprintf(id, sizeof id, "%" PRIx64, ++reg->next_id);
    bool room = r.v.len <= PY_MAX_BYTES - reg->bytes;
    struct pyobj *it = room ? pyobj_add(reg, &PY_ITERATOR, id, strlen(id)) : NULL;
    if (it && (!pyobj_charge(reg, it, (int64_t)r.v.len) || mp_buf_append(&it->keys, r.v.p, r.v.len) < 0))
        it->keys.len = 0;
    pthread_mutex_unlock(&reg->mu);
    store_release(&r);
    if (!it) {
        py_raise_msg(cx, "MemoryError", "mproc-manager: too many objects, or the server's memory budget is spent");
        return;
    }
    py_reply_begin(cx, "#PROXY");
    py_write_exposed(&cx->pw, PY_ITERATOR.exposed);
    pk_global(&cx->pw, "multiprocessing.managers", "Token");
    pk_cstr(&cx->pw, "Iterator");
    pk_none(&cx->pw);
    pk_cstr(&cx->pw, id);
    pk_tuple(&cx->pw, 3);
    pk_reduce(&cx->pw);
    pk_tuple(&cx->pw, 2);
    py_reply_end(cx);
}

static const char *dict_init(struct pycall *c)
{
    struct store *s = c->cx->reg->store;
    struct pk_node *a0 = py_pos(c, 0);
    struct sreply r;
    store_lock(s);
    int rc = py_sx(c, OP_DICT_OPEN, NULL, NULL, &r);
    if (rc == 0 && c->o->ti->t == PT_DICT && a0)
        rc = pydict_update_from(c, a0);
    if (rc == 0 && c->kwds)
        rc = pydict_update_from(c, (struct pk_node *)c->kwds);
    store_unlock(s);
    if (rc == MP_EINVAL && c->why[0])
        return c->why;
    return rc < 0 ? "mproc-manager: dict() takes a dict or pairs, with str, bytes, number or tuple keys" : NULL;
}

static const struct pymethod DICT_METHODS[] = {
    { "#GETVALUE", HOLD_STORE, dict_copy, NULL },
    { "__contains__", HOLD_STORE, dict_contains, NULL },
    { "__delitem__", HOLD_STORE, dict_delitem, NULL },
    { "__getitem__", HOLD_STORE, dict_getitem, NULL },
    { "__ior__", HOLD_STORE, dict_update, NULL },
    { "__iter__", HOLD_NONE, dict_iter, NULL },
    { "__len__", HOLD_STORE, dict_len, NULL },
    { "__or__", HOLD_STORE, dict_or, NULL },
    { "__ror__", HOLD_STORE, dict_ror, NULL },
    { "__setitem__", HOLD_STORE, dict_setitem, NULL },
    { "clear", HOLD_STORE, dict_clear, NULL },
    { "copy", HOLD_STORE, dict_copy, NULL },
    { "fromkeys", HOLD_STORE, dict_fromkeys, NULL },
    { "get", HOLD_STORE, dict_get, NULL },
    { "items", HOLD_STORE, dict_items, NULL },
    { "keys", HOLD_STORE, dict_keys, NULL },
    { "pop", HOLD_STORE, dict_pop, NULL },
    { "popitem", HOLD_STORE, dict_popitem, NULL },
    { "setdefault", HOLD_STORE, dict_setdefault, NULL },
    { "update", HOLD_STORE, dict_update, "*" },
    { "values", HOLD_STORE, dict_values, NULL },
};
const struct pyclass py_dict_class = { DICT_METHODS, sizeof DICT_METHODS / sizeof DICT_METHODS[0], dict_init,
                                       "AttributeError: method not supported", "dict" };

/* ------------------------------------------------------------------ Namespace */

/* Namespace() with its __dict__ set by BUILD. */
static void namespace_getvalue(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    int rc;
    py_reply_begin(cx, "#RETURN");
    pk_global(&cx->pw, "multiprocessing.managers", "Namespace");
    pk_tuple(&cx->pw, 0);
    pk_reduce(&cx->pw);
    if ((rc = pydict_body(c, true, true, true, true)) < 0) {
        py_raise_status(cx, rc);
        return;
    }
    pk_build(&cx->pw);
    py_reply_end(cx);
}

/* The attribute name, first argument, as a key: false when an error reply
 * was written. */
static bool namespace_key(struct pycall *c, struct mval *k)
{
    struct pk_node *a0 = py_pos(c, 0);
    int rc;
    if (!a0 || a0->kind != PK_STR) {
        py_traceback(c->cx, "TypeError: attribute name must be a string", NULL);
        return false;
    }
    if ((rc = pv_key(a0, &c->cx->tmp, k)) < 0) {
        py_raise_status(c->cx, rc);
        return false;
    }
    return true;
}

static void namespace_getattribute(struct pycall *c)
{
    struct mval k;
    struct sreply r;
    if (!namespace_key(c, &k))
        return;
    if (py_sx(c, OP_DICT_GET, &k, NULL, &r) < 0)
        py_raise_about(c->cx, "AttributeError", "'Namespace' object has no attribute %s", py_pos(c, 0),
                       "'Namespace' object has no such attribute");
    else
        py_ret_value(c->cx, &r.v);
}

static void namespace_setattr(struct pycall *c)
{
    struct pk_node *a1 = py_pos(c, 1);
    struct mval k, v;
    struct sreply r;
    int rc;
    if (!namespace_key(c, &k))
        return;
    if (!a1)
        py_traceback(c->cx, "AttributeError: method not supported", NULL);
    else if ((rc = pv_value(a1, &c->cx->tmp2, false, &v)) < 0 || (rc = py_sx(c, OP_DICT_SET, &k, &v, &r)) < 0)
        py_raise_status(c->cx, rc);
    else
        py_ret_none(c->cx);
}

static void namespace_delattr(struct pycall *c)
{
    struct mval k;
    struct sreply r;
    if (!namespace_key(c, &k))
        return;
    if (py_sx(c, OP_DICT_DEL, &k, NULL, &r) < 0)
        py_raise_about(c->cx, "AttributeError", "'Namespace' object has no attribute %s", py_pos(c, 0),
                       "'Namespace' object has no such attribute");
    else
        py_ret_none(c->cx);
}

static const struct pymethod NAMESPACE_METHODS[] = {
    { "#GETVALUE", HOLD_STORE, namespace_getvalue, NULL },
    { "__delattr__", HOLD_STORE, namespace_delattr, NULL },
    { "__getattribute__", HOLD_STORE, namespace_getattribute, NULL },
    { "__setattr__", HOLD_STORE, namespace_setattr, NULL },
};
const struct pyclass py_namespace_class = { NAMESPACE_METHODS, sizeof NAMESPACE_METHODS / sizeof NAMESPACE_METHODS[0],
                                            dict_init, "AttributeError: method not supported",
                                            "Namespace" };

/* ------------------------------------------------------------------ iterator */

static void iter_next(struct pycall *c)
{
    struct pyobj *o = c->o;
    if (o->at >= o->keys.len) {
        py_raise(c->cx, "builtins", "StopIteration", NULL, NULL);
        return;
    }
    const uint8_t *p = (const uint8_t *)o->keys.data + o->at;
    size_t kl = strnlen((const char *)p, o->keys.len - o->at);
    py_reply_begin(c->cx, "#RETURN");
    pv_key_write(&c->cx->pw, p, kl, 0);
    py_reply_end(c->cx);
    o->at += kl + 1;
}

static const struct pymethod ITER_METHODS[] = {
    { "__next__", HOLD_TABLE, iter_next, NULL },
};
const struct pyclass py_iter_class = { ITER_METHODS, 1, NULL, "AttributeError: method not supported",
                                       "generator" };
