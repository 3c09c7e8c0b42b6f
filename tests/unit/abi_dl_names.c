/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Prints the names in kvshare_dl.h's KVS_DL_FUNCS, one a line, after
 * loading the library in argv[1] through kvs_dl_open() (which resolves every
 * one of them). abi_exports.sh compares the list with the library's exports,
 * so a function added to libkvshare but not to the table fails the build's
 * tests. Links no libkvshare.
 */
#include <stdio.h>

#include "kvshare_dl.h"

int main(int argc, char **argv)
{
    kvs_dl_t kvs;
    char err[512];

    if (argc != 2) {
        fprintf(stderr, "usage: abi_dl_names LIBKVSHARE\n");
        return 2;
    }
    if (kvs_dl_open(&kvs, argv[1], err, sizeof(err)) != KVS_OK) {
        fprintf(stderr, "abi_dl_names: %s\n", err);
        return 1;
    }
#define ABI_DL_NAME(name) puts("kvs_" #name);
    KVS_DL_FUNCS(ABI_DL_NAME)
#undef ABI_DL_NAME
    kvs_dl_close(&kvs);
    return 0;
}
