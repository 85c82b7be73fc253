/* proc_stats.h - what the manager tests read about a server process from
 * /proc: resident memory and open descriptors. */
#ifndef MPROC_TEST_PROC_STATS_H
#define MPROC_TEST_PROC_STATS_H

#include <dirent.h>
#include <stdio.h>
#include <sys/types.h>
#include <unistd.h>

/* Resident anonymous memory (RssAnon: the heap, not the shared arena
 * or the program's files) in KiB, -1 if unreadable. */
static inline long proc_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "RssAnon: %ld", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

/* Open descriptors, -1 if unreadable. */
static inline int proc_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int n = 0;
    while (readdir(dir))
        n++;
    closedir(dir);
    return n - 2;
}

/* Prints what each open descriptor is and what each thread waits in, for
 * a test that found more descriptors than it expected. */
static inline void proc_print_fds(pid_t pid)
{
    char path[300], link[256];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);
    struct dirent *de;
    while (dir && (de = readdir(dir))) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/%d/fd/%s", (int)pid, de->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        link[n > 0 ? n : 0] = 0;
        printf("  pid %d fd %s -> %s\n", (int)pid, de->d_name, link);
    }
    if (dir)
        closedir(dir);
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    dir = opendir(path);
    while (dir && (de = readdir(dir))) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/wchan", (int)pid, de->d_name);
        FILE *f = fopen(path, "r");
        if (f && fgets(link, sizeof link, f))
            printf("  pid %d thread %s waits in %s\n", (int)pid, de->d_name, link);
        if (f)
            fclose(f);
    }
    if (dir)
        closedir(dir);
    fflush(stdout);
}

#endif
