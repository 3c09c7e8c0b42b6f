/* SPDX-License-Identifier: Apache-2.0 */
/* loglevel.c - the one table of log-level names (KVS__LOG_LEVELS). */
#include "util_int.h"

#include <string.h>

#define KVS__LOG_LEVEL_STR(name) #name,
static const char *const level_names[] = {KVS__LOG_LEVELS(KVS__LOG_LEVEL_STR)};

const char *kvs__log_level_name(int level)
{
    if (level < 0 || (size_t)level >= sizeof(level_names) / sizeof(level_names[0]))
        return "?";
    return level_names[level];
}

int kvs__log_level_parse(const char *s, int *level_p)
{
    if (s == NULL)
        return -1;
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *level_p = (int)i;
            return 0;
        }
    }
    return -1;
}
