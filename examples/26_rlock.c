/* 26_rlock.c - an RLock may be taken again by its holder; a plain Lock says -EDEADLK instead of hanging */
#include <mproc.h>
#include <stdio.h>

struct bank {
    mp_lock *lock;
    long a, b;
};

/* Each takes the lock for itself, so each is safe to call alone... */
static int withdraw(struct bank *k, long n)
{
    int rc = mp_lock_acquire(k->lock, MP_FOREVER);
    if (rc != 0)
        return rc;
    k->a -= n;
    return mp_lock_release(k->lock);
}

static int deposit(struct bank *k, long n)
{
    int rc = mp_lock_acquire(k->lock, MP_FOREVER);
    if (rc != 0)
        return rc;
    k->b += n;
    return mp_lock_release(k->lock);
}

/* ...and a transfer holds it across both, so nobody sees the money in flight. */
static int transfer(struct bank *k, long n)
{
    int rc = mp_lock_acquire(k->lock, MP_FOREVER);
    if (rc != 0)
        return rc;
    rc = withdraw(k, n);
    if (rc == 0)
        rc = deposit(k, n);
    mp_lock_release(k->lock);
    return rc;
}

int main(void)
{
    struct bank k = { NULL, 100, 0 };
    mp_rlock_new(&k.lock);
    int rc = transfer(&k, 30);
    printf("with an RLock: transfer -> %s, a=%ld b=%ld (the holder took it 2 levels deep)\n",
           mp_errname(rc), k.a, k.b);
    mp_lock_free(k.lock);

    mp_lock_new(&k.lock);
    rc = transfer(&k, 30);
    printf("with a Lock:   transfer -> %s (%s)\n", mp_errname(rc), mp_strerror(rc));
    printf("  Python's Lock would hang here forever; with a timeout mproc waits it out\n"
           "  and says MP_ETIMEDOUT, with MP_FOREVER it refuses at once.\n");
    mp_lock_free(k.lock);
    return 0;
}
