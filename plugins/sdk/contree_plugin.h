/*
 * contree plugin ABI, version 1: the C view of plugins/sdk/src/abi.rs.
 * A test (plugins/sdk/tests/header.rs) checks that this file and the Rust definitions
 * agree field by field, in order, type and offset. docs/plugins.md explains the rules.
 *
 * A plugin is a shared library exporting
 *
 *     const contree_plugin *contree_plugin_v1(void);
 *
 * returning a descriptor that stays valid while the library is loaded (contree never
 * unloads it). Every buffer a plugin returns in a contree_reply is allocated by the plugin
 * and released by contree through the descriptor's free_buf, exactly once. Input pointers
 * belong to contree and are valid only during the call. Calls come from one thread at a
 * time. No call may unwind (C++ exceptions, longjmp) out of the plugin.
 */
#ifndef CONTREE_PLUGIN_H
#define CONTREE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CONTREE_PLUGIN_ABI_VERSION 1
#define CONTREE_PLUGIN_ENTRY_SYMBOL "contree_plugin_v1"

/* Return values of every call. */
#define CONTREE_STATUS_OK 0    /* reply.out / reply.err hold the result */
#define CONTREE_STATUS_ERROR 1 /* reply.message says what went wrong (UTF-8) */
#define CONTREE_STATUS_PANIC 2 /* the plugin crashed in a way it caught; reply.message says where */

/* The stream argument of formatter_chunk. */
#define CONTREE_STREAM_STDOUT 1
#define CONTREE_STREAM_STDERR 2

/* A buffer allocated by the plugin (ptr is NULL when len is 0). */
typedef struct contree_buf {
    uint8_t *ptr;
    size_t len;
} contree_buf;

/* What a call hands back; contree zeroes it before every call. Formatter calls: out and
 * err are bytes for contree's stdout and stderr. resolve: out is the JSON answer. */
typedef struct contree_reply {
    contree_buf out;
    contree_buf err;
    contree_buf message;
} contree_reply;

typedef void (*contree_free_buf_fn)(uint8_t *ptr, size_t len);
typedef int32_t (*contree_formatter_new_fn)(const uint8_t *name, size_t name_len, void **state, contree_reply *reply);
typedef int32_t (*contree_formatter_json_fn)(void *state, const uint8_t *json, size_t json_len, contree_reply *reply);
typedef int32_t (*contree_formatter_chunk_fn)(void *state, uint32_t stream, const uint8_t *bytes, size_t len, contree_reply *reply);
typedef void (*contree_formatter_free_fn)(void *state);
typedef int32_t (*contree_resolve_fn)(const uint8_t *request, size_t request_len, contree_reply *reply);

/* The descriptor. abi_version and struct_size come first and never move; the struct only
 * grows at the end. Function pointers may be NULL when the manifest needs none of them. */
typedef struct contree_plugin {
    uint32_t abi_version;                      /* CONTREE_PLUGIN_ABI_VERSION */
    uint32_t struct_size;                      /* sizeof(contree_plugin) */
    const char *name;                          /* NUL-terminated UTF-8 */
    const char *version;                       /* NUL-terminated UTF-8 */
    const char *manifest;                      /* NUL-terminated JSON, see docs/plugins.md */
    contree_free_buf_fn free_buf;              /* required */
    contree_formatter_new_fn formatter_new;    /* name -> *state */
    contree_formatter_json_fn formatter_begin; /* run info JSON */
    contree_formatter_chunk_fn formatter_chunk;
    contree_formatter_json_fn formatter_finish; /* result record JSON */
    contree_formatter_free_fn formatter_free;  /* after finish, or instead of it */
    contree_resolve_fn resolve;                /* request JSON -> answer JSON in reply.out */
} contree_plugin;

typedef const contree_plugin *(*contree_plugin_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* CONTREE_PLUGIN_H */
