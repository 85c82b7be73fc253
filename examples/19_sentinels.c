/* 19_sentinels.c - waiting for whichever child ends first, with sentinels */
#include <mproc.h>
#include <poll.h>
#include <stdio.h>
#include <unistd.h>

static int work(void *arg)
{
    int tenths = *(int *)arg;
    usleep((useconds_t)tenths * 100000);
    return tenths;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    int times[3] = { 4, 1, 2 };
    mp_process *p[3];
    struct pollfd fds[3];
    for (int i = 0; i < 3; i++) {
        mp_process_new(&p[i], work, &times[i], &(mp_process_opts){ .arg_size = sizeof(int) });
        mp_process_start(p[i]);
        /* The sentinel is a pidfd: readable once the process has ended. It
         * goes into poll/epoll (or mp_wait) with sockets and pipes. */
        fds[i] = (struct pollfd){ mp_process_sentinel(p[i]), POLLIN, 0 };
        printf("started %s, working %.1f s\n", mp_process_name(p[i]), times[i] / 10.0);
    }
    printf("active children: %d\n", mp_active_children(NULL, 0));
    for (int left = 3; left > 0;) {
        poll(fds, 3, -1);
        for (int i = 0; i < 3; i++) {
            if (fds[i].fd < 0 || !fds[i].revents)
                continue;
            int code;
            mp_process_join(p[i], MP_FOREVER);    /* ended: returns at once */
            mp_process_exitcode(p[i], &code);
            fds[i].fd = -1;                        /* poll skips it from now on */
            left--;
            printf("%s ended first of those left (exit code %d); active children: %d\n",
                   mp_process_name(p[i]), code, mp_active_children(NULL, 0));
        }
    }
    for (int i = 0; i < 3; i++)
        mp_process_free(p[i]);
    return 0;
}
