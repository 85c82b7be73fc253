/* valgrind_check.h - RUNNING_ON_VALGRIND where valgrind's header exists,
 * else 0: the arena shrinks under valgrind, and tests scale down. */
#ifndef MPROC_VALGRIND_CHECK_H
#define MPROC_VALGRIND_CHECK_H

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#endif
