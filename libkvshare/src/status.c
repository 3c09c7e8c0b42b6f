/* SPDX-License-Identifier: Apache-2.0 */
/* status.c - status strings and the library version. */
#include "kvs_int.h"

#ifndef KVS_VERSION_STRING
#define KVS_VERSION_STRING "0.0.0"
#endif

const char *kvs_status_string(kvs_status_t status)
{
    switch (status) {
    case KVS_INPROGRESS:
        return "in progress";
    case KVS_OK:
        return "success";
    case KVS_ERR_INVALID_PARAM:
        return "invalid parameter";
    case KVS_ERR_NO_MEMORY:
        return "out of memory";
    case KVS_ERR_NOT_FOUND:
        return "not found";
    case KVS_ERR_NO_SPACE:
        return "no space: store full of leased blocks";
    case KVS_ERR_BUSY:
        return "busy: the block is leased, or the peer is at a limit; retry later";
    case KVS_ERR_TIMED_OUT:
        return "timed out";
    case KVS_ERR_PEER_FAILED:
        return "peer failed";
    case KVS_ERR_LAYOUT_MISMATCH:
        return "layout mismatch";
    case KVS_ERR_PROTOCOL:
        return "protocol error";
    case KVS_ERR_AUTH:
        return "authentication failed";
    case KVS_ERR_UNSUPPORTED:
        return "unsupported";
    case KVS_ERR_CONFIG:
        return "configuration error";
    case KVS_ERR_IO:
        return "I/O error";
    case KVS_ERR_STALE:
        return "stale: block changed during the read";
    case KVS_ERR_CANCELED:
        return "canceled";
    case KVS_ERR_TRANSPORT:
        return "transport error";
    }
    return "unknown status";
}

const char *kvs_version(void)
{
    return KVS_VERSION_STRING;
}
