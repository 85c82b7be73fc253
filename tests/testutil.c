/* testutil.c - shared helpers for the test executables. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double tu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double tu_slow(void)
{
    const char *s = getenv("MPROC_TEST_SLOW");
    double f = s ? atof(s) : 1.0;
    return f >= 1.0 ? f : 1.0;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "\n*** test watchdog expired: deadlock or hang ***\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    kill(getpid(), SIGKILL);
}

/* MPROC_TEST_CASE=name runs that case alone (CTest gives each case its own
 * entry that way), with MPROC_CASE_TIMEOUT seconds for it instead of the
 * whole file's bound. */
void tu_watchdog(unsigned sec)
{
    const char *only = getenv("MPROC_TEST_CASE");
    const char *case_sec = getenv("MPROC_CASE_TIMEOUT");
    if (only && *only) {
        cmocka_set_test_filter(only);
        if (case_sec && atoi(case_sec) > 0)
            sec = (unsigned)atoi(case_sec);
    }
    signal(SIGALRM, on_alarm);
    alarm((unsigned)(sec * tu_slow()));
}

pid_t tu_fork(int (*fn)(void *), void *arg)
{
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* A test that fails before it reaps its children leaves none behind
         * (they would hold the runner's output pipe open). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        _exit(fn(arg) & 0xff);
    }
    return pid;
}

int tu_wait(pid_t pid, double timeout)
{
    double end = tu_now() + timeout * tu_slow();
    int st;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
        if (r < 0)
            return TU_TIMEOUT - 1;
        if (tu_now() > end)
            break;
        usleep(1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return TU_TIMEOUT;
}

bool tu_exhaust_fds(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return false;
    rl.rlim_cur = rl.rlim_max < 32 ? rl.rlim_max : 32;   /* the hard limit stays (valgrind) */
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        return false;
    while (open("/dev/null", O_RDONLY | O_CLOEXEC) >= 0)
        ;
    return errno == EMFILE;
}

bool tu_wait_for(bool (*cond)(void *), void *arg, double timeout)
{
    double end = tu_now() + timeout * tu_slow();
    while (!cond(arg)) {
        if (tu_now() > end)
            return false;
        usleep(1000);
    }
    return true;
}

bool tu_pid_gone(pid_t pid)
{
    return kill(pid, 0) != 0;
}

/* The fields of /proc/<pid>/stat after the name ("S 1234 ..."), or NULL. */
static const char *proc_stat_fields(pid_t pid, char *buf, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *end = strrchr(buf, ')');     /* the name may hold spaces and parens */
    return end && end[1] == ' ' ? end + 2 : NULL;
}

char tu_proc_state(pid_t pid)
{
    char buf[512];
    const char *fields = proc_stat_fields(pid, buf, sizeof buf);
    return fields ? fields[0] : 0;
}

static bool asleep(void *arg)
{
    return tu_proc_state(*(pid_t *)arg) == 'S';
}

bool tu_wait_asleep(pid_t pid, double timeout)
{
    return tu_wait_for(asleep, &pid, timeout);
}

/* Every thread of this process but the caller's is asleep, and there is one. */
static bool others_asleep(void *arg)
{
    (void)arg;
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return false;
    pid_t me = gettid();         /* not syscall(): a test may interpose it */
    bool all = true;
    int others = 0;
    for (struct dirent *e; all && (e = readdir(d)) != NULL;) {
        pid_t tid = (pid_t)atoi(e->d_name);
        if (tid <= 0 || tid == me)
            continue;
        others++;
        all = tu_proc_state(tid) == 'S';      /* /proc/<tid> names a thread too */
    }
    closedir(d);
    return all && others > 0;
}

bool tu_wait_threads_asleep(double timeout)
{
    return tu_wait_for(others_asleep, NULL, timeout);
}

void *tu_resume_later(void *slot)
{
    _Atomic pid_t *stopped = slot;
    for (int i = 0; i < 1000 && atomic_load(stopped); i++)
        usleep(10 * 1000);
    pid_t pid = atomic_exchange(stopped, 0);
    if (pid)
        kill(pid, SIGCONT);
    return NULL;
}

pid_t tu_proc_ppid(pid_t pid)
{
    char buf[512];
    const char *fields = proc_stat_fields(pid, buf, sizeof buf);
    int ppid = 0;
    return fields && sscanf(fields, "%*c %d", &ppid) == 1 ? ppid : 0;
}

void tu_last_error_has(const char *first, ...)
{
    const char *msg = mp_last_error();
    va_list ap;
    va_start(ap, first);
    for (const char *want = first; want; want = va_arg(ap, const char *)) {
        if (!strstr(msg, want))
            fail_msg("mp_last_error() = \"%s\" lacks \"%s\"", msg, want);
    }
    va_end(ap);
}

char *tu_page_before_hole(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *p = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    assert_int_equal(munmap(p + page, page), 0);
    return p;
}

bool tu_die_at_syscall(long nr)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
           prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

bool tu_fail_pidfd_open(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pidfd_open, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOMEM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
           prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

mp_process *tu_start_fork(mp_target target, void *arg, size_t arg_size)
{
    mp_process *p = NULL;
    mp_process_opts o = { .method = MP_FORK, .arg_size = arg_size };
    assert_int_equal(mp_process_new(&p, target, arg, &o), 0);
    assert_int_equal(mp_process_start(p), 0);
    return p;
}

int tu_join_free(mp_process *p, double timeout)
{
    int code = -1000;
    assert_int_equal(mp_process_join(p, timeout * tu_slow()), 0);
    assert_int_equal(mp_process_exitcode(p, &code), 0);
    assert_int_equal(mp_process_free(p), 0);
    return code;
}
