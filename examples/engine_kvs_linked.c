/* SPDX-License-Identifier: Apache-2.0 */
/* engine_kvs_linked.c - fills the engine's kvshare table from the linked libkvshare. */
#include "engine.h"

/* Kept apart from engine_kvs_dlopen.c: this file is the only one that
 * references kvs_* symbols, so programs that do not link it never need
 * libkvshare at link time. */
void engine_kvs_linked(engine_kvs_t *api)
{
#define ENGINE_KVS_LINK(name) api->name = kvs_##name;
    KVS_DL_FUNCS(ENGINE_KVS_LINK)
#undef ENGINE_KVS_LINK
    api->handle = NULL;
}
