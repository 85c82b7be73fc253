/* 61_manager_meeting.c - two unrelated programs meet through a named dict and queue */
#include <mproc.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char KEY[] = "meeting-secret";
enum { JOBS = 5 };

/* The second program: it shares no parent's memory, only the address and
 * the authkey it was given on the command line. */
static int worker_program(const char *address)
{
    mp_manager *m;
    mp_dict *board;
    mp_mqueue *jobs, *done;
    int rc = mp_manager_connect(&m, address, KEY, strlen(KEY));
    if (rc != 0) {
        fprintf(stderr, "worker: connect: %s\n", mp_strerror(rc));
        return 1;
    }
    mp_dict_open(m, "board", &board);
    mp_manager_queue(m, "jobs", 0, &jobs);
    mp_manager_queue(m, "done", 0, &done);

    mp_buf msg = { 0 };
    if (mp_dict_get(board, "greeting", &msg) == 0)
        printf("  [worker %d] connected to %s, board says: %.*s\n", (int)getpid(), address,
               (int)msg.len, (char *)msg.data);
    for (;;) {
        if (mp_mqueue_get(jobs, &msg, 5.0) != 0)
            break;
        if (msg.len == 4 && memcmp(msg.data, "STOP", 4) == 0)
            break;
        int x = atoi((char *)msg.data);
        char out[64];
        int n = snprintf(out, sizeof out, "%d squared is %d", x, x * x);
        mp_mqueue_put(done, out, (size_t)n, 5.0);
        mp_dict_incr(board, "jobs_done", 1, NULL);
    }
    mp_buf_free(&msg);
    mp_mqueue_free(jobs);
    mp_mqueue_free(done);
    mp_dict_free(board);
    mp_manager_free(m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "worker") == 0)
        return worker_program(argv[2]);

    mp_manager *m;
    int rc = mp_manager_start(&m, &(mp_manager_opts){ .authkey = KEY, .authkey_len = strlen(KEY) });
    if (rc != 0) {
        fprintf(stderr, "manager: %s\n", mp_strerror(rc));
        return 1;
    }
    const char *address = mp_manager_address(m);
    printf("Program A started a manager at %s (authkey \"%s\").\n", address, KEY);
    mp_dict *board;
    mp_mqueue *jobs, *done;
    mp_dict_open(m, "board", &board);
    mp_manager_queue(m, "jobs", 0, &jobs);
    mp_manager_queue(m, "done", 0, &done);
    mp_dict_set(board, "greeting", "hello from program A", 20);
    for (int i = 1; i <= JOBS; i++) {
        char job[16];
        int n = snprintf(job, sizeof job, "%d", i);
        mp_mqueue_put(jobs, job, (size_t)n, 5.0);
    }
    mp_mqueue_put(jobs, "STOP", 4, 5.0);
    printf("A put %d jobs on queue \"jobs\" and starts program B: a new program (exec),\n"
           "given only the address and the key.\n", JOBS);
    fflush(stdout);

    pid_t b = fork();
    if (b == 0) {
        execl("/proc/self/exe", argv[0], "worker", address, (char *)NULL);
        _exit(127);
    }
    mp_buf out = { 0 };
    for (int i = 0; i < JOBS; i++)
        if (mp_mqueue_get(done, &out, 10.0) == 0)
            printf("A got back: %.*s\n", (int)out.len, (char *)out.data);
    int status = 1;
    waitpid(b, &status, 0);
    int64_t count = 0;
    mp_dict_get_i64(board, "jobs_done", &count);
    printf("B has left; the board says it did %lld jobs.\n", (long long)count);

    mp_buf_free(&out);
    mp_mqueue_free(jobs);
    mp_mqueue_free(done);
    mp_dict_free(board);
    mp_manager_free(m);
    return status == 0 && count == JOBS ? 0 : 1;
}
