/* 40_pipe.c - Pipe: two ends, one conversation between a parent and a child */
/*
 * mp_pipe gives two connected ends (Python's Pipe()). The parent keeps one,
 * the child uses the other; messages arrive whole and in order. When the
 * last holder of one end closes it, the other end reads MP_EEOF - Python's
 * EOFError - which is how the child learns the conversation is over.
 * (The child is started with fork() here; mp_process does the same job.)
 */
#include <mproc.h>

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int child(mp_conn *mine)
{
    char buf[128];
    size_t len;
    int rc;
    while ((rc = mp_conn_recv_bytes(mine, buf, sizeof buf - 1, &len)) == 0) {
        buf[len] = '\0';
        printf("  child  got \"%s\", answers with its length\n", buf);
        fflush(stdout);
        char reply[32];
        int n = snprintf(reply, sizeof reply, "%zu bytes", len);
        mp_conn_send_bytes(mine, reply, (size_t)n);
    }
    printf("  child  reads %s: the parent closed its end, so the child is done\n", mp_errname(rc));
    mp_conn_close(mine);
    fflush(stdout);                    /* _exit does not flush stdio */
    return rc == MP_EEOF ? 0 : 1;
}

int main(void)
{
    mp_conn *parent_end, *child_end;
    if (mp_pipe(&parent_end, &child_end, true) != 0)
        return 1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        mp_conn_close(parent_end);     /* the child holds only its own end */
        _exit(child(child_end));
    }
    mp_conn_close(child_end);          /* ... and the parent only its own */

    const char *words[] = { "hello", "from the parent", "bye" };
    for (int i = 0; i < 3; i++) {
        char reply[64];
        size_t len;
        printf("parent sends \"%s\"\n", words[i]);
        fflush(stdout);
        mp_conn_send_bytes(parent_end, words[i], strlen(words[i]));
        if (mp_conn_recv_bytes(parent_end, reply, sizeof reply - 1, &len) != 0)
            return 1;
        reply[len] = '\0';
        printf("parent hears \"%s\"\n", reply);
    }
    printf("parent closes its end\n");
    fflush(stdout);
    mp_conn_close(parent_end);
    int status;
    waitpid(pid, &status, 0);
    printf("child exited with %d\n", WEXITSTATUS(status));

    /* A one-way pipe: a receives, b sends (as Python's Pipe(duplex=False)). */
    mp_conn *a, *b;
    mp_pipe(&a, &b, false);
    int wrong = mp_conn_send_bytes(a, "x", 1);
    printf("one-way pipe: sending on the receiving end gives %s\n", mp_errname(wrong));
    mp_conn_close(a);
    mp_conn_close(b);
    return WEXITSTATUS(status);
}
