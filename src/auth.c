/* auth.c - the authkey handshake of multiprocessing.connection, both
 * generations, byte for byte.
 *
 * The challenger sends "#CHALLENGE#" and random bytes; the answer is an HMAC
 * of those bytes under the shared key; the challenger replies "#WELCOME#" or
 * "#FAILURE#". Python <= 3.11 sends 20 bytes and expects a bare HMAC-MD5;
 * 3.12+ sends "{sha256}" + 40 bytes and expects "{sha256}" + HMAC-SHA256 (the
 * MAC covers the prefix too), and still accepts a bare 16-byte MD5 answer.
 * A message's length or prefix tells which generation the peer speaks.
 */
#include "conn_internal.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#define CHALLENGE "#CHALLENGE#"
#define WELCOME "#WELCOME#"
#define FAILURE "#FAILURE#"
#define CHALLENGE_LEN (sizeof CHALLENGE - 1)
#define MESSAGE_LENGTH 40          /* random bytes in a 3.12+ challenge */
#define LEGACY_MESSAGE_LENGTH 20   /* random bytes in a <= 3.11 challenge */
#define MD5_LEN 16
#define MAX_DIGEST_NAME 8          /* "sha3_256" */
#define HANDSHAKE_MAX 256          /* CPython's recv_bytes(256) */

/* Why this thread's last handshake failed with MP_EAUTH (auth_why). */
static _Thread_local const char *why;

const char *auth_why(void)
{
    return why ? why : "it failed the handshake";
}

static const EVP_MD *digest_by_name(const char *name, size_t n)
{
    static const struct { const char *name; const EVP_MD *(*md)(void); } known[] = {
        { "md5", EVP_md5 }, { "sha256", EVP_sha256 }, { "sha384", EVP_sha384 },
        { "sha3_256", EVP_sha3_256 }, { "sha3_384", EVP_sha3_384 },
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strlen(known[i].name) == n && memcmp(known[i].name, name, n) == 0)
            return known[i].md();
    return NULL;
}

/* CPython's _get_digest_name_and_payload: a 16- or 20-byte message is
 * legacy (name_len 0, MD5); otherwise it must start "{name}" with an
 * allowed name. Returns the offset of the payload, or -1. */
static int split_digest(const uint8_t *m, size_t len, const char **name, size_t *name_len)
{
    if (len == MD5_LEN || len == LEGACY_MESSAGE_LENGTH) {
        *name = "md5";
        *name_len = 0;
        return 0;
    }
    if (len < 2 || m[0] != '{')
        return -1;
    for (size_t i = 1; i < len && i < MAX_DIGEST_NAME + 2; i++) {
        if (m[i] == '}') {
            if (!digest_by_name((const char *)m + 1, i - 1))
                return -1;
            *name = (const char *)m + 1;
            *name_len = i - 1;
            return (int)i + 1;
        }
    }
    return -1;
}

/* OpenSSL frees its locks from an atexit handler, which would pull them
 * from under a thread still in a handshake when the process exits (a
 * server's connection threads: ThreadSanitizer saw it). Initialised here
 * first, it registers none; its memory goes with the process. */
static pthread_once_t openssl_once = PTHREAD_ONCE_INIT;

static void openssl_init(void)
{
    OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
}

static int hmac_of(const char *name, size_t name_len, const void *key, size_t keylen,
                   const uint8_t *msg, size_t len, uint8_t *out, unsigned *out_len)
{
    pthread_once(&openssl_once, openssl_init);
    const EVP_MD *md = digest_by_name(name, name_len ? name_len : strlen(name));
    if (!md || keylen > INT32_MAX)
        return MP_EAUTH;
    static const uint8_t no_key[1];
    if (!HMAC(md, keylen ? key : no_key, (int)keylen, msg, len, out, out_len))
        return MP_EAUTH;
    return 0;
}

/* Any failure to talk is a failed authentication, except running out of
 * time, and the peer hanging up before its verdict (a reset or a broken
 * pipe too): MP_EEOF, no verdict at all, which a caller that may connect
 * again can take as such (a server drops handshakes it has begun to make
 * room in a flood). */
static int auth_error(int rc)
{
    if (rc == 0 || rc == MP_ETIMEDOUT)
        return rc;
    if (rc == MP_EEOF || rc == -ECONNRESET || rc == -EPIPE)
        return MP_EEOF;
    if (rc != MP_EAUTH)
        why = "it sent no handshake frame this protocol knows";
    return MP_EAUTH;
}

static int verify_answer(const void *key, size_t keylen, const uint8_t *message, size_t mlen,
                         const uint8_t *answer, size_t alen)
{
    const char *name;
    size_t name_len;
    int at = split_digest(answer, alen, &name, &name_len);
    if (at < 0)
        return MP_EAUTH;
    uint8_t expected[EVP_MAX_MD_SIZE];
    unsigned elen;
    int rc = hmac_of(name, name_len, key, keylen, message, mlen, expected, &elen);
    if (rc != 0)
        return rc;
    size_t got = alen - (size_t)at;
    if (got != elen || CRYPTO_memcmp(expected, answer + at, elen) != 0) {
        why = "its answer to our challenge is wrong: it does not have the authkey";
        return MP_EAUTH;
    }
    return 0;
}

/* "#CHALLENGE#", "{digest}" unless digest is NULL, and random bytes, into
 * msg (AUTH_CHALLENGE_MAX bytes); its length, or MP_EINVAL / MP_EAUTH. */
static int make_challenge(const char *digest, uint8_t *msg)
{
    size_t n = CHALLENGE_LEN;
    memcpy(msg, CHALLENGE, n);
    size_t random_len = LEGACY_MESSAGE_LENGTH;
    if (digest) {
        size_t dl = strlen(digest);
        if (dl > MAX_DIGEST_NAME || !digest_by_name(digest, dl))
            return MP_EINVAL;
        msg[n++] = '{';
        memcpy(msg + n, digest, dl);
        n += dl;
        msg[n++] = '}';
        random_len = MESSAGE_LENGTH;
    }
    if (getrandom(msg + n, random_len, 0) != (ssize_t)random_len)
        return MP_EAUTH;
    return (int)(n + random_len);
}
_Static_assert(CHALLENGE_LEN + MAX_DIGEST_NAME + 2 + MESSAGE_LENGTH <= AUTH_CHALLENGE_MAX,
               "a challenge fits its buffer");
_Static_assert(AUTH_FRAME_MAX == FRAME_HEADER_MAX + HANDSHAKE_MAX, "a frame fits its buffer");

int auth_deliver_challenge(int fd, const void *key, size_t keylen, const char *digest,
                           const mp_deadline *d)
{
    why = NULL;
    uint8_t msg[AUTH_CHALLENGE_MAX];
    int n = make_challenge(digest, msg);
    if (n < 0)
        return n;
    mp_buf answer = { 0 };
    int rc = conn_send_frame(fd, msg, (size_t)n);
    if (rc == 0)
        rc = conn_recv_frame(fd, &answer, HANDSHAKE_MAX, d);
    if (rc == 0) {
        rc = verify_answer(key, keylen, msg + CHALLENGE_LEN, (size_t)n - CHALLENGE_LEN,
                           answer.data, answer.len);
        const char *reply = rc == 0 ? WELCOME : FAILURE;
        int sent = conn_send_frame(fd, reply, strlen(reply));
        if (rc == 0)
            rc = sent;
    }
    mp_buf_free(&answer);
    return auth_error(rc);
}

static int build_answer(const void *key, size_t keylen, const uint8_t *m, size_t len,
                        uint8_t *out, size_t *out_len)
{
    why = "its first message is no #CHALLENGE#: it does not speak this protocol";
    if (len < CHALLENGE_LEN || memcmp(m, CHALLENGE, CHALLENGE_LEN) != 0)
        return MP_EAUTH;
    m += CHALLENGE_LEN;
    size_t mlen = len - CHALLENGE_LEN;
    const char *name;
    size_t name_len;
    if (mlen < LEGACY_MESSAGE_LENGTH || split_digest(m, mlen, &name, &name_len) < 0)
        return MP_EAUTH;
    size_t n = 0;
    if (name_len) {                     /* answer in the form we were asked */
        out[n++] = '{';
        memcpy(out + n, name, name_len);
        n += name_len;
        out[n++] = '}';
    }
    unsigned mac_len;
    int rc = hmac_of(name, name_len, key, keylen, m, mlen, out + n, &mac_len);
    *out_len = n + mac_len;
    return rc;
}

/* The peer's verdict, and if it is welcome, an ACK for it at once: a
 * client's WELCOME is its last handshake frame and its first request comes
 * straight after (sock_ack_now). */
static bool is_welcome(int fd, const uint8_t *m, size_t len)
{
    if (len != strlen(WELCOME) || memcmp(m, WELCOME, len) != 0) {
        why = len == strlen(FAILURE) && memcmp(m, FAILURE, len) == 0
              ? "it refused our answer (#FAILURE#): the authkeys differ"
              : "its verdict is neither #WELCOME# nor #FAILURE#: it does not speak this protocol";
        return false;
    }
    sock_ack_now(fd);
    return true;
}

int auth_answer_challenge(int fd, const void *key, size_t keylen, const mp_deadline *d)
{
    why = NULL;
    mp_buf msg = { 0 };
    uint8_t answer[MAX_DIGEST_NAME + 2 + EVP_MAX_MD_SIZE];
    size_t answer_len = 0;
    int rc = conn_recv_frame(fd, &msg, HANDSHAKE_MAX, d);
    if (rc == 0)
        rc = build_answer(key, keylen, msg.data, msg.len, answer, &answer_len);
    if (rc == 0)
        rc = conn_send_frame(fd, answer, answer_len);
    if (rc == 0)
        rc = conn_recv_frame(fd, &msg, HANDSHAKE_MAX, d);
    if (rc == 0 && !is_welcome(fd, msg.data, msg.len))
        rc = MP_EAUTH;
    mp_buf_free(&msg);
    return auth_error(rc);
}

/* ------------------------------------------------------------------ step by step */

enum { WAIT_ANSWER, WAIT_CHALLENGE, WAIT_VERDICT };

/* One frame in a single send that does not wait: the handshake's frames
 * are small, and a peer that leaves no room for one in an empty socket
 * buffer is not one to wait for. */
static int send_now(int fd, const void *data, size_t len)
{
    uint8_t buf[FRAME_HEADER_MAX + HANDSHAKE_MAX];
    size_t h = frame_header_encode(len, buf);
    memcpy(buf + h, data, len);
    ssize_t n = send(fd, buf, h + len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n == (ssize_t)(h + len))
        return 0;
    return n >= 0 || errno == EAGAIN || errno == EWOULDBLOCK ? MP_EAUTH : -errno;
}

int auth_server_start(struct auth_server *a, int fd)
{
    memset(a, 0, sizeof *a);
    int n = make_challenge(AUTH_DEFAULT_DIGEST, a->challenge);
    if (n < 0)
        return n;
    a->challenge_len = (uint8_t)n;
    a->phase = WAIT_ANSWER;
    a->want = 4;
    return auth_error(send_now(fd, a->challenge, (size_t)n));
}

/* Reads toward the frame being awaited, never past it (the peer's first
 * message may follow its last handshake frame): 1 when it is whole, 0 when
 * the socket has nothing more for now, or an error. */
static int read_frame(struct auth_server *a, int fd)
{
    while (a->have < a->want) {
        ssize_t n = recv(fd, a->frame + a->have, a->want - a->have, MSG_DONTWAIT);
        if (n == 0)
            return MP_EEOF;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -errno;
        a->have += (uint16_t)n;
        if (a->have < a->want || a->head)
            continue;
        uint64_t len;
        int rc = a->have == 4 ? frame_header_short(a->frame, &len)
                              : frame_header_long(a->frame + 4, &len);
        if (rc == 1) {
            a->want = 12;             /* an 8-byte length follows */
            continue;
        }
        if (rc < 0 || len > HANDSHAKE_MAX)
            return MP_EAUTH;
        a->head = a->have;
        a->want = (uint16_t)(a->have + len);
    }
    return 1;
}

int auth_server_step(struct auth_server *a, int fd, const void *key, size_t keylen)
{
    for (;;) {
        int rc = read_frame(a, fd);
        if (rc <= 0)
            return rc == 0 ? 1 : auth_error(rc);
        const uint8_t *body = a->frame + a->head;
        size_t len = (size_t)(a->want - a->head);
        a->have = a->head = 0;
        a->want = 4;
        if (a->phase == WAIT_ANSWER) {
            rc = verify_answer(key, keylen, a->challenge + CHALLENGE_LEN,
                               a->challenge_len - CHALLENGE_LEN, body, len);
            int sent = send_now(fd, rc == 0 ? WELCOME : FAILURE, strlen(rc == 0 ? WELCOME : FAILURE));
            if (rc == 0)
                rc = sent;
            a->phase = WAIT_CHALLENGE;
        } else if (a->phase == WAIT_CHALLENGE) {
            uint8_t answer[MAX_DIGEST_NAME + 2 + EVP_MAX_MD_SIZE];
            size_t answer_len = 0;
            rc = build_answer(key, keylen, body, len, answer, &answer_len);
            if (rc == 0)
                rc = send_now(fd, answer, answer_len);
            a->phase = WAIT_VERDICT;
        } else {
            return is_welcome(fd, body, len) ? 0 : MP_EAUTH;
        }
        if (rc != 0)
            return auth_error(rc);
    }
}
