/* SPDX-License-Identifier: Apache-2.0 */
/* engine_kvs_dlopen.c - fills the engine's kvshare table by dlopen + dlsym, for engines that load
 * kvshare optionally. */
#include "engine.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

kvs_status_t engine_kvs_dlopen(engine_kvs_t *api, const char *path, char *errbuf, size_t errlen)
{
    if (path == NULL)
        path = getenv("KVSHARE_ENGINE_LIB");
    if (path == NULL || *path == '\0')
        path = "libkvshare.so.0"; /* the soname: ABI 0, found like any library */
    /* RTLD_LOCAL keeps kvs_* out of the global namespace, so a second copy
     * linked elsewhere in the process cannot be bound by accident. */
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        const char *why = dlerror();
        snprintf(errbuf, errlen, "kvshare: dlopen(%s): %s", path, why ? why : "failed");
        return KVS_ERR_NOT_FOUND;
    }
    engine_kvs_t t = {.dl = dl};
    /* Look up every function before using any: a library missing one (an
     * older ABI, or not kvshare at all) is refused whole, never called
     * through a NULL entry. The cast from void * is what POSIX dlsym needs. */
#define ENGINE_KVS_SYM(name)                                                                       \
    t.name = (__typeof__(t.name))dlsym(dl, "kvs_" #name);                                          \
    if (t.name == NULL) {                                                                          \
        snprintf(errbuf, errlen, "kvshare: %s has no symbol kvs_" #name, path);                    \
        dlclose(dl);                                                                               \
        return KVS_ERR_NOT_FOUND;                                                                  \
    }
    ENGINE_KVS_FUNCS(ENGINE_KVS_SYM)
#undef ENGINE_KVS_SYM
    *api = t;
    return KVS_OK;
}

void engine_kvs_close(engine_kvs_t *api)
{
    if (api != NULL && api->dl != NULL) {
        dlclose(api->dl);
        api->dl = NULL;
    }
}
