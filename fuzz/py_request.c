/* py_request.c - libFuzzer target: the pickle reader behind the manager's
 * Python protocol (src/manager/pickle.c), and the writer that re-emits what
 * it read. Any bytes must decode to a request or an error, never a crash,
 * an out-of-bounds read or unbounded memory (run under ASan/UBSan). */
#include <stddef.h>
#include <stdint.h>

#include "manager/pyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    py_decode_request(data, size);
    return 0;
}
