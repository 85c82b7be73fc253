/* consumer.c - the smallest program an installed mproc must build and run:
 * the header compiles, the library links (shared or static) and answers. */
#include <mproc.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    if (mp_version() != MP_VERSION_HEX) {
        fprintf(stderr, "header %#x, library %#x\n", MP_VERSION_HEX, mp_version());
        return 1;
    }
    if (strcmp(mp_errname(MP_ETIMEDOUT), "MP_ETIMEDOUT") != 0)
        return 1;
    char *p = mp_shared_alloc(64);
    if (!p)
        return 1;
    strcpy(p, "shared");
    printf("mproc %s: %s\n", mp_version_string(), p);
    mp_shared_free(p);
    return 0;
}
