/* manager_request.c - libFuzzer target: the manager's request decoder.
 * Any bytes must decode to a checked request or an error, never a crash or
 * an out-of-bounds read (run under ASan/UBSan). */
#include <stddef.h>
#include <stdint.h>

#include "manager/manager_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    manager_decode_request(data, size);
    return 0;
}
