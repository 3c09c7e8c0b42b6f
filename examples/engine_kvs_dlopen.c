/* SPDX-License-Identifier: Apache-2.0 */
/* engine_kvs_dlopen.c - fills the engine's kvshare table by dlopen + dlsym, for engines that load
 * kvshare optionally. */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>

kvs_status_t engine_kvs_dlopen(engine_kvs_t *api, const char *path, char *errbuf, size_t errlen)
{
    char why[448];
    kvs_status_t status;

    if (path == NULL) {
        path = getenv("KVSHARE_ENGINE_LIB");
    }
    /* kvs_dl_open() resolves every symbol before filling the table, so a
     * library missing one is refused whole, never called through NULL. */
    status = kvs_dl_open(api, path, why, sizeof(why));
    if (status != KVS_OK) {
        snprintf(errbuf, errlen, "kvshare: %s", why);
    }
    return status;
}

void engine_kvs_close(engine_kvs_t *api)
{
    kvs_dl_close(api);
}
