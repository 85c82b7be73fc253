/* pyvalue.h - how values and dict keys cross between Python's pickles and
 * the store (docs/manager-protocol.md, section 10, "Values between the
 * languages").
 *
 * A value: int and float as the store's numbers (in a queue or list, whose
 * C calls carry bytes only, as their 8 little-endian bytes, tagged 'I' or
 * 'F'), bytes as bytes, str as its UTF-8 bytes (tagged 'S'), anything else
 * as a pickle re-written from the request's own nodes (tagged 'P'), which
 * the client gets back as pickle.loads(bytes). A dict key: a str is its
 * UTF-8 text (the C key); numbers, None, bytes and tuples of these are
 * encoded after a 0xff byte so that Python's equal keys (1, 1.0, True) are
 * one key. The same encoding (with lists too) is how two stored values are
 * compared with Python's ==.
 */
#ifndef MPROC_MANAGER_PYVALUE_H
#define MPROC_MANAGER_PYVALUE_H

#include "manager/pickle.h"
#include "manager/protocol.h"

/* A value kept outside the store (Value, Array items): as the store keeps it. */
struct sval {
    enum mtype type;
    uint8_t tag;
    int64_t i;
    double f;
    mp_buf b;
};

/* A request's value as the store keeps it; its bytes point into the
 * request or into buf. seq: for a queue or list. 0, MP_ENOMEM, MP_ETOOBIG. */
int pv_value(struct pk_node *n, mp_buf *buf, bool seq, struct mval *v);
/* Writes the Python value a stored value stands for. */
void pv_write(struct pk_writer *w, const struct mval *v);
/* Python's == for numbers; other values by their bytes and tag. */
bool pv_equal(const struct mval *a, const struct mval *b);
/* A stored int, float or bool as a number: false for anything else. */
bool pv_number(const struct mval *v, bool *is_int, int64_t *i, double *f);
int pv_sval_set(struct sval *s, const struct mval *v);
struct mval pv_sval_view(const struct sval *s);

/* A dict key node as the store's key, in b: 0, MP_ETYPE (not a key type
 * served here) or MP_ETOOBIG. */
int pv_key(struct pk_node *n, mp_buf *b, struct mval *k);
/* Writes the Python key a store key stands for (depth: 0). */
int pv_key_write(struct pk_writer *w, const uint8_t *p, size_t n, int depth);

#endif
