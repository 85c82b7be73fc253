/* pylist.c - list for Python's clients (pyobj.h).
 *
 * A list is a store list, shared with C clients by name; its items are
 * values by pyvalue.c's table (numbers as tagged bytes, as a C list holds
 * bytes). The store knows get, set, append, pop and length; everything
 * else Python's list does (insert, remove, reverse, sort, slices, + and *)
 * is built from those here, under the store mutex, so each is atomic as it
 * is in Python's server.
 */
#include "manager/pyobj.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void reply_status(struct pyconn *cx, int rc)
{
    if (rc < 0)
        py_raise_status(cx, rc);
    else
        py_ret_none(cx);
}

static int64_t list_len(struct pycall *c)
{
    struct sreply r;
    py_sx(c, OP_LIST_LEN, NULL, NULL, &r);
    return r.v.i;
}

/* Item i's value, kept in keep while the store changes under it. */
static int list_copy_item(struct pycall *c, int64_t i, mp_buf *keep, struct mval *out)
{
    struct sreply r;
    struct mval at = mint(i);
    int rc = py_sx(c, OP_LIST_GET, &at, NULL, &r);
    if (rc < 0)
        return rc;
    *out = r.v;
    if (out->type == MV_BYTES) {
        if (mp_buf_append(keep, out->p, out->len) < 0)
            return MP_ENOMEM;
        out->p = keep->data ? keep->data : (const uint8_t *)"";
    }
    return 0;
}

/* Moves item from to index to (shifting the ones between), store mutex held. */
static int list_move(struct pycall *c, int64_t from, int64_t to)
{
    struct sreply r;
    struct mval item;
    mp_buf keep = { 0 };
    int rc = list_copy_item(c, from, &keep, &item);
    int step = from < to ? 1 : -1;
    for (int64_t k = from; k != to && rc == 0; k += step) {
        struct mval src = mint(k + step), dst = mint(k);
        if ((rc = py_sx(c, OP_LIST_GET, &src, NULL, &r)) == 0) {
            struct mval moved = r.v;
            rc = py_sx(c, OP_LIST_SET, &dst, &moved, &r);
        }
    }
    struct mval at = mint(to);
    if (rc == 0)
        rc = py_sx(c, OP_LIST_SET, &at, &item, &r);
    mp_buf_free(&keep);
    return rc;
}

/* Exchanges items i and j, store mutex held. */
static int list_swap(struct pycall *c, int64_t i, int64_t j)
{
    struct sreply r;
    struct mval ai = mint(i), aj = mint(j), first;
    mp_buf keep = { 0 };
    int rc = list_copy_item(c, i, &keep, &first);
    if (rc == 0 && (rc = py_sx(c, OP_LIST_GET, &aj, NULL, &r)) == 0) {
        struct mval second = r.v;
        if ((rc = py_sx(c, OP_LIST_SET, &ai, &second, &r)) == 0)
            rc = py_sx(c, OP_LIST_SET, &aj, &first, &r);
    }
    mp_buf_free(&keep);
    return rc;
}

/* Pops the list back to len0 items: a call that fails part way (past the
 * budget) leaves the list as it found it, as Python's list does. */
static void list_truncate(struct pycall *c, int64_t len0)
{
    struct sreply r;
    struct mval last = mint(-1);
    for (int64_t n = list_len(c); n > len0; n--) {
        if (py_sx(c, OP_LIST_POP, &last, NULL, &r) < 0)
            break;
        store_release(&r);
    }
}

/* Whether n more items could fit the store's budget; false for a count
 * past int64 too. */
static bool items_fit(struct pycall *c, uint64_t n)
{
    return n <= INT64_MAX && store_items_fit_locked(c->cx->reg->store, n);
}

int pylist_append(struct pycall *c, struct pk_node *n)
{
    struct mval v;
    struct sreply r;
    int rc = pv_value(n, &c->cx->tmp2, true, &v);
    return rc < 0 ? rc : py_sx(c, OP_LIST_APPEND, &v, NULL, &r);
}

/* A builtins.range(start, stop, step) node's three numbers: false if n is
 * not one (nothing is called: the numbers are the pickle's own). */
static bool range_of(const struct pk_node *n, int64_t *start, int64_t *stop, int64_t *step)
{
    if (!n || n->kind != PK_OBJECT || n->op != 'R' || n->kids[0]->kind != PK_GLOBAL || n->kids[1]->n != 3)
        return false;
    const struct pk_node *g = n->kids[0], *a = n->kids[1];
    if (g->len != 8 || memcmp(g->p, "builtins", 8) || g->len2 != 5 || memcmp(g->p2, "range", 5))
        return false;
    for (int k = 0; k < 3; k++)
        if (a->kids[k]->kind != PK_INT)
            return false;
    *start = a->kids[0]->i;
    *stop = a->kids[1]->i;
    *step = a->kids[2]->i;
    return *step != 0;
}

/* Appends every item of src as list(src) would see them: a list or tuple,
 * a range, a str (its characters), bytes (their ints), a dict (its keys).
 * MP_ETYPE for anything whose iteration would run code. */
/* Appends the items of list from (its length now: extending a list by
 * itself doubles it), store mutex held. */
static int list_extend_from_list(struct pycall *c, struct pyobj *from)
{
    struct pycall src = { .cx = c->cx, .o = from };
    struct sreply r, w;
    int64_t n = list_len(&src);
    int rc = items_fit(c, (uint64_t)n) ? 0 : MP_ENOMEM;
    for (int64_t i = 0; i < n && rc == 0; i++) {
        struct mval at = mint(i);
        if ((rc = py_sx(&src, OP_LIST_GET, &at, NULL, &r)) == 0) {
            struct mval item = r.v;
            rc = py_sx(c, OP_LIST_APPEND, &item, NULL, &w);
        }
    }
    return rc;
}

static int extend_from(struct pycall *c, struct pk_node *src)
{
    int64_t start, stop, step;
    int rc = 0;
    struct pyobj *proxied = py_proxy_hold(c->cx->reg, src);
    if (proxied) {                      /* a list proxy: its items, as Python's server iterates it */
        rc = proxied->ti->t == PT_LIST ? list_extend_from_list(c, proxied) : MP_ETYPE;
        pyobj_release(c->cx->reg, proxied);
        return rc;
    }
    if (range_of(src, &start, &stop, &step)) {   /* range(10**18) is refused at once */
        uint64_t n = step > 0 ? (start < stop ? ((uint64_t)stop - (uint64_t)start - 1) / (uint64_t)step + 1 : 0)
                              : (start > stop ? ((uint64_t)start - (uint64_t)stop - 1) / (0 - (uint64_t)step) + 1 : 0);
        if (!items_fit(c, n))
            return MP_ENOMEM;
    }
    if (src->kind == PK_LIST || src->kind == PK_TUPLE || src->kind == PK_DICT) {
        uint32_t every = src->kind == PK_DICT ? 2 : 1;
        for (uint32_t i = 0; rc == 0 && i < src->n; i += every)
            rc = pylist_append(c, src->kids[i]);
    } else if (range_of(src, &start, &stop, &step)) {
        for (int64_t i = start; rc == 0 && (step > 0 ? i < stop : i > stop); i += step) {
            struct pk_node item = { .kind = PK_INT, .i = i };
            rc = pylist_append(c, &item);
            if (step > 0 ? i > INT64_MAX - step : i < INT64_MIN - step)
                break;
        }
    } else if (src->kind == PK_STR || src->kind == PK_BYTES) {
        for (size_t at = 0, w; rc == 0 && at < src->len; at += w) {
            w = 1;
            if (src->kind == PK_STR)       /* the reader has checked the UTF-8 */
                while (at + w < src->len && (src->p[at + w] & 0xc0) == 0x80)
                    w++;
            struct pk_node item = { .kind = src->kind == PK_STR ? PK_STR : PK_INT, .p = src->p + at, .len = w,
                                    .i = src->p[at] };
            rc = pylist_append(c, &item);
        }
    } else {
        rc = MP_ETYPE;
    }
    return rc;
}

int pylist_extend_from(struct pycall *c, struct pk_node *src)
{
    int64_t len0 = list_len(c);
    int rc = extend_from(c, src);
    if (rc < 0)
        list_truncate(c, len0);
    return rc;
}

/* Index of the first item equal to n at or after start, or -1; with
 * count, counts them all. */
static int64_t list_find(struct pycall *c, struct pk_node *n, int64_t start, int64_t stop, int64_t *count)
{
    struct mval v;
    struct sreply r;
    int64_t found = -1;
    if (pv_value(n, &c->cx->tmp2, true, &v) < 0)
        return -1;
    int64_t len = list_len(c);
    if (stop < len)
        len = stop;
    if (count)
        *count = 0;
    for (int64_t i = start < 0 ? 0 : start; i < len; i++) {
        struct mval at = mint(i);
        if (py_sx(c, OP_LIST_GET, &at, NULL, &r) == 0 && pv_equal(&r.v, &v)) {
            if (found < 0)
                found = i;
            if (!count)
                break;
            (*count)++;
        }
    }
    return found;
}

/* Writes the whole list, times times, then extra's items, as a list:
 * false, with nothing more written, once the reply would pass
 * PY_MAX_BYTES (the first round tells what each costs). An empty list
 * takes no rounds, whatever times says. */
static bool list_body(struct pycall *c, int64_t times, struct pk_node *extra)
{
    struct pyconn *cx = c->cx;
    struct sreply r;
    int64_t len = list_len(c);
    pk_empty_list(&cx->pw);
    size_t start = cx->out.len;
    for (int64_t t = 0; t < times && len > 0; t++) {
        size_t per = cx->out.len - start;
        if (cx->out.len > PY_MAX_BYTES ||
            (t == 1 && per && (uint64_t)(times - 1) > (PY_MAX_BYTES - cx->out.len) / per))
            return false;
        for (int64_t i = 0; i < len; i += 1000) {
            pk_mark(&cx->pw);
            for (int64_t k = i; k < len && k < i + 1000; k++) {
                struct mval at = mint(k);
                py_sx(c, OP_LIST_GET, &at, NULL, &r);
                pv_write(&cx->pw, &r.v);
            }
            pk_appends(&cx->pw);
        }
    }
    if (extra && extra->n) {
        pk_mark(&cx->pw);
        for (uint32_t i = 0; i < extra->n; i++)
            pk_node(&cx->pw, extra->kids[i]);
        pk_appends(&cx->pw);
    }
    return cx->out.len <= PY_MAX_BYTES;
}

static void list_too_big(struct pycall *c)
{
    py_raise_msg(c->cx, "MemoryError", "mproc-manager: the list is too large to send");
}

static void list_write(struct pycall *c, int64_t times, struct pk_node *extra)
{
    py_reply_begin(c->cx, "#RETURN");
    if (list_body(c, times, extra))
        py_reply_end(c->cx);
    else
        list_too_big(c);
}

/* reversed(l): builtins.reversed of a copy, which the client makes. */
static void list_reversed(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    py_reply_begin(cx, "#RETURN");
    pk_global(&cx->pw, "builtins", "reversed");
    if (!list_body(c, 1, NULL)) {
        list_too_big(c);
        return;
    }
    pk_tuple(&cx->pw, 1);
    pk_reduce(&cx->pw);
    py_reply_end(cx);
}

/* Whether n is a builtins.slice whose step is 0 (Python's ValueError). */
static bool slice_step_zero(const struct pk_node *n)
{
    int64_t a, b, step;
    if (!n || n->kind != PK_OBJECT || n->op != 'R' || n->kids[0]->kind != PK_GLOBAL || n->kids[1]->n != 3)
        return false;
    const struct pk_node *g = n->kids[0], *st = n->kids[1]->kids[2];
    return g->len2 == 5 && memcmp(g->p2, "slice", 5) == 0 && is_int(st) && st->i == 0 &&
           !py_slice_of(n, 0, &a, &b, &step);
}

/* The number of indices of a resolved slice (any step, INT64_MIN too:
 * the division is unsigned, so -step never overflows). */
static int64_t slice_count(int64_t start, int64_t stop, int64_t step)
{
    if (step > 0)
        return start < stop ? (int64_t)((uint64_t)(stop - start - 1) / (uint64_t)step) + 1 : 0;
    return start > stop ? (int64_t)((uint64_t)(start - stop - 1) / (0 - (uint64_t)step)) + 1 : 0;
}

/* del l[start:stop:step], highest index first so the others stay put. */
static int list_del_slice(struct pycall *c, int64_t start, int64_t stop, int64_t step)
{
    struct sreply r;
    int64_t n = slice_count(start, stop, step);
    int64_t first = step > 0 ? start + (n - 1) * step : start, by = step > 0 ? -step : step;
    int rc = 0;
    for (int64_t k = 0, i = first; k < n && rc == 0; k++, i += by) {
        struct mval at = mint(i);
        rc = py_sx(c, OP_LIST_POP, &at, NULL, &r);
        store_release(&r);
    }
    return rc;
}

/* l[start:stop:step] = items (a list or tuple node): a plain slice is
 * replaced whatever the sizes, an extended one item by item. */
static void list_set_slice(struct pycall *c, int64_t start, int64_t stop, int64_t step, struct pk_node *items)
{
    struct pyconn *cx = c->cx;
    struct sreply r;
    int64_t n = slice_count(start, stop, step);
    int rc = 0;
    char msg[128];
    if (!items || (items->kind != PK_LIST && items->kind != PK_TUPLE)) {
        py_raise_msg(cx, "TypeError", step == 1 ? "can only assign an iterable"
                                                : "must assign iterable to extended slice");
        return;
    }
    if (step != 1 && (int64_t)items->n != n) {
        snprintf(msg, sizeof msg, "attempt to assign sequence of size %" PRIu32 " to extended slice of size %" PRId64,
                 items->n, n);
        py_raise_msg(cx, "ValueError", msg);
        return;
    }
    if (step != 1) {
        for (int64_t k = 0; k < n && rc == 0; k++) {
            struct mval at = mint(start + k * step), v;
            if ((rc = pv_value(items->kids[k], &cx->tmp2, true, &v)) == 0)
                rc = py_sx(c, OP_LIST_SET, &at, &v, &r);
        }
    } else {
        rc = list_del_slice(c, start, stop, 1);
        for (uint32_t k = 0; k < items->n && rc == 0; k++) {
            int64_t len = list_len(c);
            if ((rc = pylist_append(c, items->kids[k])) == 0 && start + k < len)
                rc = list_move(c, len, start + k);
        }
    }
    reply_status(cx, rc);
}

/* ------------------------------------------------------------------ sort */

/* One item of a list being sorted: a number, or bytes (str or bytes). */
struct sort_item {
    size_t index;                /* its place before: the sort is stable, as Python's */
    bool is_int;
    int64_t i;
    double f;
    struct sval v;
};

static int sort_cmp(const void *pa, const void *pb, void *reverse)
{
    const struct sort_item *a = pa, *b = pb;
    int c;
    if (a->v.type == MV_BYTES && (a->v.tag == 0 || a->v.tag == 'S')) {
        size_t n = a->v.b.len < b->v.b.len ? a->v.b.len : b->v.b.len;
        c = n ? memcmp(a->v.b.data, b->v.b.data, n) : 0;   /* UTF-8 byte order is code point order */
        if (c == 0)
            c = (a->v.b.len > b->v.b.len) - (a->v.b.len < b->v.b.len);
    } else if (a->is_int && b->is_int) {
        c = (a->i > b->i) - (a->i < b->i);
    } else {
        double x = a->is_int ? (double)a->i : a->f, y = b->is_int ? (double)b->i : b->f;
        c = (x > y) - (x < y);
    }
    if (*(const bool *)reverse)
        c = -c;
    return c ? c : (a->index > b->index) - (a->index < b->index);
}

/* Reads item i for sorting; kind is 0 for numbers, 'S' str, 'B' bytes,
 * and every item must be of the first one's kind. */
static int sort_load(struct pycall *c, int64_t i, struct sort_item *it, int *kind)
{
    struct sreply r;
    struct mval at = mint(i);
    int rc;
    if ((rc = py_sx(c, OP_LIST_GET, &at, NULL, &r)) < 0 || (rc = pv_sval_set(&it->v, &r.v)) < 0)
        return rc;
    it->index = (size_t)i;
    const struct mval *v = &r.v;
    bool num = pv_number(v, &it->is_int, &it->i, &it->f);
    int k = num ? 0 : v->tag == 'S' ? 'S' : v->type == MV_BYTES && v->tag == 0 ? 'B' : -2;
    if (k == -2 || (*kind != -1 && k != *kind))
        rc = MP_ETYPE;
    *kind = k;
    return rc;
}

/* list.sort(reverse=...) of numbers, of str or of bytes (no key function:
 * the server runs no client code). */
static void list_sort(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    const struct pk_node *key = py_arg(c, 99, "key"), *rev = py_arg(c, 99, "reverse");
    bool reverse = py_truthy(rev, false);
    if (c->args && c->args->n) {
        py_raise_msg(cx, "TypeError", "sort() takes no positional arguments");
        return;
    }
    if (key && key->kind != PK_NONE) {
        py_traceback(cx, "NotImplementedError: mproc-manager sorts without a key function", NULL);
        return;
    }
    int64_t len = list_len(c);
    if (len < 2) {                      /* Python compares nothing */
        py_ret_none(cx);
        return;
    }
    struct sort_item *it = calloc(len ? (size_t)len : 1, sizeof *it);
    int kind = -1, rc = it ? 0 : MP_ENOMEM;
    struct sreply r;
    for (int64_t i = 0; i < len && rc == 0; i++)
        rc = sort_load(c, i, &it[i], &kind);
    if (rc == 0) {
        qsort_r(it, (size_t)len, sizeof *it, sort_cmp, &reverse);
        for (int64_t i = 0; i < len && rc == 0; i++) {
            struct mval at = mint(i), v = pv_sval_view(&it[i].v);
            rc = py_sx(c, OP_LIST_SET, &at, &v, &r);
        }
    }
    for (int64_t i = 0; it && i < len; i++)
        mp_buf_free(&it[i].v.b);
    free(it);
    if (rc == MP_ETYPE)
        py_raise_msg(cx, "TypeError", "mproc-manager: sort() orders lists of numbers, of str or of bytes");
    else if (rc < 0)
        py_raise_status(cx, rc);
    else
        py_ret_none(cx);
}

/* ------------------------------------------------------------------ methods */

static void list_len_method(struct pycall *c) { py_ret_int(c->cx, list_len(c)); }

static void list_append(struct pycall *c)
{
    uint32_t n = c->args ? c->args->n : 0;
    if (n != 1) {                       /* Python's TypeError, not a RuntimeError */
        char msg[80];
        snprintf(msg, sizeof msg, "list.append() takes exactly one argument (%" PRIu32 " given)", n);
        py_raise_msg(c->cx, "TypeError", msg);
        return;
    }
    reply_status(c->cx, pylist_append(c, py_pos(c, 0)));
}

static void list_extend(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0);
    int rc = a0 ? pylist_extend_from(c, a0) : MP_ETYPE;
    char msg[96];
    if (rc == MP_ETYPE && a0 && (is_number(a0) || a0->kind == PK_NONE || a0->kind == PK_BIGINT)) {
        snprintf(msg, sizeof msg, "'%s' object is not iterable", py_type_name(a0));
        py_raise_msg(c->cx, "TypeError", msg);
    } else if (rc == MP_ETYPE) {
        py_raise_msg(c->cx, "TypeError", "mproc-manager: extend() takes a list, tuple, range, str, bytes or dict");
    } else {
        reply_status(c->cx, rc);
    }
}

static void list_imul(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0);
    struct sreply r;
    if (!is_int(a0)) {
        char msg[96];
        snprintf(msg, sizeof msg, "'%s' object cannot be interpreted as an integer", py_type_name(a0));
        py_raise_msg(c->cx, "TypeError", msg);
        return;
    }
    int64_t times = a0->i, len = list_len(c);
    struct store *s = c->cx->reg->store;
    int rc = 0;
    /* Refused before it starts when the copies cannot fit: their slots,
     * then (once one copy is made) half what that copy cost for each of the
     * rest; past the budget part way, the list is put back as it was.
     * l *= 10**18 used to fill the whole budget, with the store held for
     * seconds, and keep what it had made. */
    if (times > 1 && len > 0 && ((uint64_t)(times - 1) > UINT64_MAX / (uint64_t)len ||
                                 !items_fit(c, (uint64_t)len * (uint64_t)(times - 1))))
        rc = MP_ENOMEM;
    size_t room = store_room_locked(s);
    for (int64_t t = 1; t < times && len > 0 && rc == 0; t++) {   /* [] * n is [] at once */
        for (int64_t i = 0; i < len && rc == 0; i++) {
            struct mval at = mint(i);
            if ((rc = py_sx(c, OP_LIST_GET, &at, NULL, &r)) == 0) {
                struct mval item = r.v;
                rc = py_sx(c, OP_LIST_APPEND, &item, NULL, &r);
            }
        }
        size_t left = store_room_locked(s), per = room > left ? room - left : 0;
        if (rc == 0 && t == 1 && per && (uint64_t)(times - 2) / 2 > left / per)   /* the ring grows in steps */
            rc = MP_ENOMEM;
    }
    if (rc < 0)
        list_truncate(c, len);
    for (int64_t i = times <= 0 ? len : 0; i > 0 && rc == 0; i--) {
        struct mval last = mint(-1);
        rc = py_sx(c, OP_LIST_POP, &last, NULL, &r);
        store_release(&r);
    }
    reply_status(c->cx, rc);
}

/* The index argument of l[i], l[i] = v, del l[i] and pop(i): false when an
 * error reply was written. */
static bool list_index(struct pycall *c, bool pop, struct mval *at)
{
    struct pk_node *a0 = py_pos(c, 0);
    *at = mint(pop && !a0 ? -1 : is_int(a0) ? a0->i : 0);
    char msg[96];
    if (a0 && a0->kind == PK_BIGINT) {
        if (pop)
            py_raise_msg(c->cx, "OverflowError", "Python int too large to convert to C ssize_t");
        else
            py_raise_msg(c->cx, "IndexError", "cannot fit 'int' into an index-sized integer");
    } else if (!pop && !is_int(a0)) {
        snprintf(msg, sizeof msg, "list indices must be integers or slices, not %s", py_type_name(a0));
        py_raise_msg(c->cx, "TypeError", msg);
    } else if (pop && a0 && !is_int(a0)) {
        snprintf(msg, sizeof msg, "'%s' object cannot be interpreted as an integer", py_type_name(a0));
        py_raise_msg(c->cx, "TypeError", msg);
    } else if (pop && list_len(c) == 0) {
        py_raise_msg(c->cx, "IndexError", "pop from empty list");
    } else {
        return true;
    }
    return false;
}

/* l[i] or pop(i): the item, taken out by pop. */
static void list_take(struct pycall *c, bool pop)
{
    struct sreply r;
    struct mval at;
    if (!list_index(c, pop, &at))
        return;
    if (py_sx(c, pop ? OP_LIST_POP : OP_LIST_GET, &at, NULL, &r) < 0) {
        py_raise_msg(c->cx, "IndexError", pop ? "pop index out of range" : "list index out of range");
        return;
    }
    py_ret_value(c->cx, &r.v);
    store_release(&r);
}

static void list_getitem(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct sreply r;
    int64_t start, stop, step;
    if (slice_step_zero(py_pos(c, 0))) {
        py_raise_msg(cx, "ValueError", "slice step cannot be zero");
        return;
    }
    if (!py_slice_of(py_pos(c, 0), list_len(c), &start, &stop, &step)) {
        list_take(c, false);
        return;
    }
    py_reply_begin(cx, "#RETURN");
    pk_empty_list(&cx->pw);
    int64_t n = slice_count(start, stop, step);
    for (int64_t k = 0; k < n; k++) {          /* i += step could pass INT64_MAX after the last */
        struct mval at = mint(start + k * step);
        py_sx(c, OP_LIST_GET, &at, NULL, &r);
        pk_mark(&cx->pw);
        pv_write(&cx->pw, &r.v);
        pk_appends(&cx->pw);
    }
    py_reply_end(cx);
}

static void list_pop(struct pycall *c) { list_take(c, true); }

static void list_setitem(struct pycall *c)
{
    struct pk_node *a1 = py_pos(c, 1);
    struct sreply r;
    struct mval at, v;
    int64_t start, stop, step;
    if (slice_step_zero(py_pos(c, 0))) {
        py_raise_msg(c->cx, "ValueError", "slice step cannot be zero");
        return;
    }
    if (py_slice_of(py_pos(c, 0), list_len(c), &start, &stop, &step)) {
        list_set_slice(c, start, stop, step, a1);
        return;
    }
    if (!list_index(c, false, &at))
        return;
    if (!a1 || pv_value(a1, &c->cx->tmp2, true, &v) < 0 || py_sx(c, OP_LIST_SET, &at, &v, &r) < 0)
        py_raise_msg(c->cx, "IndexError", "list assignment index out of range");
    else
        py_ret_none(c->cx);
}

static void list_delitem(struct pycall *c)
{
    struct sreply r;
    struct mval at;
    int64_t start, stop, step;
    if (slice_step_zero(py_pos(c, 0))) {
        py_raise_msg(c->cx, "ValueError", "slice step cannot be zero");
        return;
    }
    if (py_slice_of(py_pos(c, 0), list_len(c), &start, &stop, &step)) {
        reply_status(c->cx, list_del_slice(c, start, stop, step));
        return;
    }
    if (!list_index(c, false, &at))
        return;
    if (py_sx(c, OP_LIST_POP, &at, NULL, &r) < 0)
        py_raise_msg(c->cx, "IndexError", "list assignment index out of range");
    else
        py_ret_none(c->cx);
    store_release(&r);
}

static void list_insert(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0), *a1 = py_pos(c, 1);
    if (a0 && a0->kind == PK_BIGINT && a1) {
        py_raise_msg(c->cx, "OverflowError", "Python int too large to convert to C ssize_t");
        return;
    }
    if (!is_int(a0) || !a1) {
        py_raise_msg(c->cx, "TypeError", "insert takes an index and an item");
        return;
    }
    int64_t len = list_len(c), at = a0->i < 0 ? a0->i + len : a0->i;
    at = at < 0 ? 0 : at > len ? len : at;
    int rc = pylist_append(c, a1);
    if (rc == 0 && at < len)
        rc = list_move(c, len, at);
    reply_status(c->cx, rc);
}

static void list_contains(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0);
    py_ret_bool(c->cx, a0 && list_find(c, a0, 0, INT64_MAX, NULL) >= 0);
}

static void list_count(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0);
    int64_t count = 0;
    if (a0)
        list_find(c, a0, 0, INT64_MAX, &count);
    py_ret_int(c->cx, count);
}

/* index(x[, start[, stop]]): start and stop as Python's list.index takes
 * them (ints past int64 clamped, negatives from the end). */
static void list_index_method(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0);
    int64_t len = list_len(c), bound[2] = { 0, INT64_MAX };
    for (uint32_t k = 0; k < 2; k++) {
        struct pk_node *b = py_pos(c, k + 1);
        if (b && !py_int_clamped(b, &bound[k])) {
            py_raise_msg(c->cx, "TypeError", "slice indices must be integers or have an __index__ method");
            return;
        }
        if (bound[k] < 0)
            bound[k] = bound[k] + len < 0 ? 0 : bound[k] + len;
    }
    int64_t found = a0 ? list_find(c, a0, bound[0], bound[1], NULL) : -1;
    if (found < 0)
        py_raise_about(c->cx, "ValueError", "%s is not in list", a0, "item is not in list");
    else
        py_ret_int(c->cx, found);
}

static void list_remove(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0);
    struct sreply r;
    if (!c->args || c->args->n != 1) {
        char msg[80];
        snprintf(msg, sizeof msg, "list.remove() takes exactly one argument (%" PRIu32 " given)",
                 c->args ? c->args->n : 0);
        py_raise_msg(c->cx, "TypeError", msg);
        return;
    }
    int64_t found = a0 ? list_find(c, a0, 0, INT64_MAX, NULL) : -1;
    if (found < 0) {
        py_raise_msg(c->cx, "ValueError", "list.remove(x): x not in list");
        return;
    }
    struct mval at = mint(found);
    py_sx(c, OP_LIST_POP, &at, NULL, &r);
    store_release(&r);
    py_ret_none(c->cx);
}

static void list_reverse(struct pycall *c)
{
    int64_t len = list_len(c);
    int rc = 0;
    for (int64_t i = 0; i < len / 2 && rc == 0; i++)
        rc = list_swap(c, i, len - 1 - i);
    reply_status(c->cx, rc);
}

static void list_copy(struct pycall *c) { list_write(c, 1, NULL); }

static void list_clear(struct pycall *c)
{
    struct sreply r;
    for (int64_t i = list_len(c); i > 0; i--) {
        struct mval last = mint(-1);
        py_sx(c, OP_LIST_POP, &last, NULL, &r);
        store_release(&r);
    }
    py_ret_none(c->cx);
}

static void list_add(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0);
    char msg[96];
    if (!a0 || a0->kind != PK_LIST) {
        snprintf(msg, sizeof msg, "can only concatenate list (not \"%s\") to list", py_type_name(a0));
        py_raise_msg(c->cx, "TypeError", msg);
    } else
        list_write(c, 1, a0);
}

static void list_mul(struct pycall *c)
{
    struct pk_node *a0 = py_pos(c, 0);
    char msg[96];
    if (!is_int(a0)) {
        snprintf(msg, sizeof msg, "'%s' object cannot be interpreted as an integer", py_type_name(a0));
        py_raise_msg(c->cx, "TypeError", msg);
    } else
        list_write(c, a0->i, NULL);
}

static const char *list_init(struct pycall *c)
{
    struct store *s = c->cx->reg->store;
    struct pk_node *a0 = py_pos(c, 0);
    struct sreply r;
    store_lock(s);
    int rc = py_sx(c, OP_LIST_OPEN, NULL, NULL, &r);
    if (rc == 0 && a0)
        rc = pylist_extend_from(c, a0);
    store_unlock(s);
    return rc < 0 ? "mproc-manager: list() takes a list, tuple, range, str, bytes or dict" : NULL;
}

static const struct pymethod LIST_METHODS[] = {
    { "#GETVALUE", HOLD_STORE, list_copy, NULL },
    { "__add__", HOLD_STORE, list_add, NULL },
    { "__contains__", HOLD_STORE, list_contains, NULL },
    { "__delitem__", HOLD_STORE, list_delitem, NULL },
    { "__getitem__", HOLD_STORE, list_getitem, NULL },
    { "__imul__", HOLD_STORE, list_imul, NULL },
    { "__len__", HOLD_STORE, list_len_method, NULL },
    { "__mul__", HOLD_STORE, list_mul, NULL },
    { "__reversed__", HOLD_STORE, list_reversed, NULL },
    { "__rmul__", HOLD_STORE, list_mul, NULL },
    { "__setitem__", HOLD_STORE, list_setitem, NULL },
    { "append", HOLD_STORE, list_append, NULL },
    { "clear", HOLD_STORE, list_clear, NULL },
    { "copy", HOLD_STORE, list_copy, NULL },
    { "count", HOLD_STORE, list_count, NULL },
    { "extend", HOLD_STORE, list_extend, NULL },
    { "index", HOLD_STORE, list_index_method, NULL },
    { "insert", HOLD_STORE, list_insert, NULL },
    { "pop", HOLD_STORE, list_pop, NULL },
    { "remove", HOLD_STORE, list_remove, NULL },
    { "reverse", HOLD_STORE, list_reverse, NULL },
    { "sort", HOLD_STORE, list_sort, "c key reverse" },
};
const struct pyclass py_list_class = { LIST_METHODS, sizeof LIST_METHODS / sizeof LIST_METHODS[0], list_init,
                                       "NotImplementedError: mproc-manager does not run this list method",
                                       "list" };
