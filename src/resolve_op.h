/* resolve_op.h - a host name's addresses as an operation (resolve_op.c). */
#ifndef SONDE_RESOLVE_OP_H
#define SONDE_RESOLVE_OP_H

#include <stdint.h>

#include "sonde/loop.h"
#include "sonde/result.h"

/* Resolve `name` within `timeout` seconds; cb gets a result whose output
 * lists the addresses one per line (see resolve_op.c).  Returns the op's
 * id, 0 when out of memory. */
uint64_t sonde_resolve_start(struct sonde_loop *loop, const char *name,
                             double timeout, sonde_result_cb cb, void *arg);

#endif
