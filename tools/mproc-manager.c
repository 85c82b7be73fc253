/* mproc-manager.c - run a manager server, or talk to one from the shell.
 *
 *   mproc-manager serve --address tcp:127.0.0.1:50000 --authkey-file KEY
 *                       [--handshake-timeout SECONDS] [--max-memory BYTES[K|M|G]]
 *   mproc-manager get|set|incr|keys|del --address A --authkey-file K DICT [KEY [VALUE]]
 *
 * Exit codes: 0 ok, 1 not found (or the operation failed), 2 usage,
 * 3 connection or authentication. Errors go to stderr.
 */
#include "manager/manager_internal.h"
#include "manager/wire.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

enum { EXIT_NOTFOUND = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };

static const char USAGE[] =
    "usage: mproc-manager serve --address ADDR --authkey-file FILE\n"
    "                           [--handshake-timeout SECONDS] [--max-memory BYTES[K|M|G]]\n"
    "       mproc-manager get  --address ADDR --authkey-file FILE DICT KEY\n"
    "       mproc-manager set  --address ADDR --authkey-file FILE [--int|--float] DICT KEY VALUE\n"
    "       mproc-manager incr --address ADDR --authkey-file FILE DICT KEY [DELTA]\n"
    "       mproc-manager keys --address ADDR --authkey-file FILE DICT\n"
    "       mproc-manager del  --address ADDR --authkey-file FILE DICT KEY\n"
    "\n"
    "ADDR is unix:/path, unix:@abstract or tcp:HOST:PORT. The authkey is the\n"
    "file's bytes (one trailing newline dropped). `serve` runs in the\n"
    "foreground and prints its address; SIGTERM or SIGINT stops it. A peer\n"
    "must finish the handshake within --handshake-timeout (default 1 s); all\n"
    "stored data together may use --max-memory (default 1G).\n"
    "Exit: 0 ok, 1 not found or failed, 2 usage, 3 connection or authkey.\n";

struct args {
    const char *cmd, *address, *keyfile;
    char type;              /* 'b' bytes, 'i' int64, 'f' double (set) */
    int handshake_ms;       /* serve: 0 = default */
    size_t max_bytes;       /* serve: 0 = default */
    char **pos;
    int npos;
    uint8_t key[WIRE_MAX_AUTHKEY];
    size_t keylen;
};

static int usage_error(const char *why)
{
    fprintf(stderr, "mproc-manager: %s\n%s", why, USAGE);
    return EXIT_USAGE;
}

static int read_key(struct args *a)
{
    FILE *f = fopen(a->keyfile, "rb");
    if (!f) {
        fprintf(stderr, "mproc-manager: %s: %s\n", a->keyfile, strerror(errno));
        return EXIT_USAGE;
    }
    a->keylen = fread(a->key, 1, sizeof a->key, f);
    bool more = fgetc(f) != EOF;
    fclose(f);
    if (more)
        return usage_error("authkey file too long (1024 bytes at most)");
    if (a->keylen > 0 && a->key[a->keylen - 1] == '\n')
        a->keylen--;
    return 0;
}

static int parse_args(int argc, char **argv, struct args *a)
{
    static const struct option opts[] = {
        { "address", required_argument, NULL, 'a' }, { "authkey-file", required_argument, NULL, 'k' },
        { "int", no_argument, NULL, 'i' }, { "float", no_argument, NULL, 'f' },
        { "handshake-timeout", required_argument, NULL, 't' },
        { "max-memory", required_argument, NULL, 'm' },
        { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
    };
    a->type = 'b';
    int c;
    while ((c = getopt_long(argc, argv, "+a:k:h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': a->address = optarg; break;
        case 'k': a->keyfile = optarg; break;
        case 'i': a->type = 'i'; break;
        case 'f': a->type = 'f'; break;
        case 't': {
            char *end;
            double t = strtod(optarg, &end);
            if (*end || !(t > 0 && t <= 3600))
                return usage_error("--handshake-timeout needs seconds in (0, 3600]");
            a->handshake_ms = t * 1000 < 1 ? 1 : (int)(t * 1000);
            break;
        }
        case 'm': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            unsigned shift = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
            if (shift)
                end++;
            if (errno || *end || v == 0 || optarg[0] == '-' || v > (SIZE_MAX >> shift))
                return usage_error("--max-memory needs a positive size (BYTES, or with K, M or G)");
            a->max_bytes = (size_t)v << shift;
            break;
        }
        case 'h': fputs(USAGE, stdout); exit(0);
        default: return EXIT_USAGE;
        }
    }
    return 0;
}

/* Options may come before or after the command word. */
static int parse(int argc, char **argv, struct args *a)
{
    if (argc < 2)
        return usage_error("missing command");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(USAGE, stdout);
        exit(0);
    }
    a->cmd = argv[1];
    int rc = parse_args(argc - 1, argv + 1, a);
    if (rc)
        return rc;
    a->pos = argv + 1 + optind;
    a->npos = argc - 1 - optind;
    if (!a->address || !a->keyfile)
        return usage_error("--address and --authkey-file are required");
    return read_key(a);
}

/* ------------------------------------------------------------------ serve */

static int cmd_serve(struct args *a)
{
    if (a->npos != 0)
        return usage_error("serve takes no arguments");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);   /* before any thread: all inherit it */
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    char actual[WIRE_MAX_ADDRESS];
    int lfd;
    int rc = sfd < 0 ? errno_to_mp(errno) : wire_listen(a->address, &lfd, actual, sizeof actual);
    if (rc < 0) {
        fprintf(stderr, "mproc-manager: cannot listen on %s: %s\n", a->address, mp_strerror(rc));
        return EXIT_CONNECT;
    }
    printf("%s\n", actual);
    fflush(stdout);
    struct manager_server_opts so = { .listen_fd = lfd, .authkey = a->key,
                                      .authkey_len = a->keylen, .stop_fd = sfd,
                                      .handshake_ms = a->handshake_ms, .max_bytes = a->max_bytes };
    rc = manager_serve(&so);            /* which removes a unix address's file */
    close(lfd);
    if (rc < 0) {
        fprintf(stderr, "mproc-manager: %s\n", mp_strerror(rc));
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ one-shot commands */

static int op_status(int rc, const struct args *a)
{
    if (rc == 0)
        return 0;
    fprintf(stderr, "mproc-manager: %s %s: %s\n", a->cmd, a->npos > 1 ? a->pos[1] : a->pos[0],
            mp_strerror(rc));
    return rc == MP_EBROKEN ? EXIT_CONNECT : EXIT_NOTFOUND;
}

static bool parse_i64(const char *s, int64_t *v)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    *v = x;
    return *s && !*end && errno == 0;
}

static int cmd_get(mp_dict *d, const struct args *a)
{
    mp_buf b = { 0 };
    int64_t i;
    double f;
    int rc = mp_dict_get(d, a->pos[1], &b);
    if (rc == 0) {
        fwrite(b.data, 1, b.len, stdout);
        putchar('\n');
    } else if (rc == MP_ETYPE && (rc = mp_dict_get_i64(d, a->pos[1], &i)) == 0) {
        printf("%" PRId64 "\n", i);
    } else if (rc == MP_ETYPE && (rc = mp_dict_get_f64(d, a->pos[1], &f)) == 0) {
        printf("%.17g\n", f);
    }
    mp_buf_free(&b);
    return op_status(rc, a);
}

static int cmd_set(mp_dict *d, const struct args *a)
{
    const char *v = a->pos[2];
    int64_t i;
    char *end;
    if (a->type == 'i') {
        if (!parse_i64(v, &i))
            return usage_error("--int needs an integer VALUE");
        return op_status(mp_dict_set_i64(d, a->pos[1], i), a);
    }
    if (a->type == 'f') {
        double f = strtod(v, &end);
        if (!*v || *end)
            return usage_error("--float needs a number VALUE");
        return op_status(mp_dict_set_f64(d, a->pos[1], f), a);
    }
    return op_status(mp_dict_set(d, a->pos[1], v, strlen(v)), a);
}

static int cmd_incr(mp_dict *d, const struct args *a)
{
    int64_t delta = 1, result;
    if (a->npos == 3 && !parse_i64(a->pos[2], &delta))
        return usage_error("DELTA must be an integer");
    int rc = mp_dict_incr(d, a->pos[1], delta, &result);
    if (rc == 0)
        printf("%" PRId64 "\n", result);
    return op_status(rc, a);
}

static int cmd_keys(mp_dict *d, const struct args *a)
{
    mp_buf b = { 0 };
    int rc = mp_dict_keys(d, &b);
    for (size_t at = 0; rc == 0 && at < b.len; at += strlen((char *)b.data + at) + 1)
        printf("%s\n", (char *)b.data + at);
    mp_buf_free(&b);
    return op_status(rc, a);
}

static int cmd_del(mp_dict *d, const struct args *a)
{
    return op_status(mp_dict_del(d, a->pos[1]), a);
}

struct command {
    const char *name;
    int min, max;           /* positional arguments */
    int (*run)(mp_dict *d, const struct args *a);
};

static const struct command COMMANDS[] = {
    { "get", 2, 2, cmd_get }, { "set", 3, 3, cmd_set }, { "incr", 2, 3, cmd_incr },
    { "keys", 1, 1, cmd_keys }, { "del", 2, 2, cmd_del },
};

static int run_command(const struct command *c, struct args *a)
{
    if (a->npos < c->min || a->npos > c->max)
        return usage_error("wrong number of arguments");
    mp_manager *m;
    mp_dict *d;
    int rc = mp_manager_connect(&m, a->address, a->key, a->keylen);
    if (rc < 0) {
        fprintf(stderr, "mproc-manager: cannot connect to %s: %s\n", a->address, mp_strerror(rc));
        return EXIT_CONNECT;
    }
    if ((rc = mp_dict_open(m, a->pos[0], &d)) < 0) {
        fprintf(stderr, "mproc-manager: dict %s: %s\n", a->pos[0], mp_strerror(rc));
        mp_manager_free(m);
        return rc == MP_EINVAL ? EXIT_USAGE : EXIT_CONNECT;
    }
    int code = c->run(d, a);
    mp_dict_free(d);
    mp_manager_free(m);
    return code;
}

int main(int argc, char **argv)
{
    struct args a = { 0 };
    int rc = parse(argc, argv, &a);
    if (rc)
        return rc;
    if (strcmp(a.cmd, "serve") == 0)
        return cmd_serve(&a);
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (strcmp(a.cmd, COMMANDS[i].name) == 0)
            return run_command(&COMMANDS[i], &a);
    return usage_error("unknown command");
}
