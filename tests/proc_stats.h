/* proc_stats.h - what the manager tests read about a server process from
 * /proc: resident memory and open descriptors. */
#ifndef MPROC_TEST_PROC_STATS_H
#define MPROC_TEST_PROC_STATS_H

#include <dirent.h>
#include <stdio.h>
#include <sys/types.h>

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

#endif
