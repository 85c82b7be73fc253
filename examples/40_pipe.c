/* 40_pipe.c - Pipe: two ends, one conversation between a parent and a child */
/*
 * mp_pipe gives two connected ends (Python's Pipe()). The parent keeps one,
 * the child uses the other; messages arrive whole and in order. When every
 * holder of one end has closed it, the other end reads MP_EEOF - Python's
 * EOFError - which is how the child learns the conversation is over. The
 * child here is spawned (a fresh program), and the handles still work in
 * it: they live in memory the whole process family shares.
 */
#include <mproc.h>

#include <stdio.h>
#include <string.h>

struct ends { mp_conn *parent_end, *child_end; };

static int child(void *arg)
{
    struct ends *e = arg;
    setvbuf(stdout, NULL, _IOLBF, 0);  /* a spawned child never runs main */
    /* Like a forked child, the spawned one holds a copy of every end that was
     * open when it started. It closes the parent's: otherwise, when the
     * parent closes its end, this copy would keep the pipe open and the EOF
     * below would never come. */
    mp_conn_close(e->parent_end);
    char buf[128];
    size_t len;
    int rc;
    while ((rc = mp_conn_recv_bytes(e->child_end, buf, sizeof buf - 1, &len)) == 0) {
        buf[len] = '\0';
        printf("  child  got \"%s\", answers with its length\n", buf);
        char reply[32];
        int n = snprintf(reply, sizeof reply, "%zu bytes", len);
        mp_conn_send_bytes(e->child_end, reply, (size_t)n);
    }
    printf("  child  reads %s: the parent closed its end, so the child is done\n", mp_errname(rc));
    mp_conn_close(e->child_end);
    return rc == MP_EEOF ? 0 : 1;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct ends e;
    mp_process *p;
    if (mp_pipe(&e.parent_end, &e.child_end, true) != 0 ||
        mp_process_new(&p, child, &e, &(mp_process_opts){ .method = MP_SPAWN, .arg_size = sizeof e }) != 0 ||
        mp_process_start(p) != 0)
        return 1;
    mp_conn_close(e.child_end);        /* the parent keeps only its own end */

    const char *words[] = { "hello", "from the parent", "bye" };
    for (int i = 0; i < 3; i++) {
        char reply[64];
        size_t len;
        printf("parent sends \"%s\"\n", words[i]);
        mp_conn_send_bytes(e.parent_end, words[i], strlen(words[i]));
        if (mp_conn_recv_bytes(e.parent_end, reply, sizeof reply - 1, &len) != 0)
            return 1;
        reply[len] = '\0';
        printf("parent hears \"%s\"\n", reply);
    }
    printf("parent closes its end\n");
    mp_conn_close(e.parent_end);
    int code = 1;
    mp_process_join(p, 10);
    mp_process_exitcode(p, &code);
    mp_process_free(p);
    printf("child exited with %d\n", code);

    /* A one-way pipe: a receives, b sends (as Python's Pipe(duplex=False)). */
    mp_conn *a, *b;
    mp_pipe(&a, &b, false);
    printf("one-way pipe: sending on the receiving end gives %s\n", mp_errname(mp_conn_send_bytes(a, "x", 1)));
    mp_conn_close(a);
    mp_conn_close(b);
    return code;
}
