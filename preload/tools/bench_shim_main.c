/* SPDX-License-Identifier: Apache-2.0 */
/* Standalone `kvshare bench shim` (the same code the kvshare command runs). */
#include "bench_shim.h"

int main(int argc, char **argv)
{
    return kvs_cli_bench_shim(argc, argv);
}
