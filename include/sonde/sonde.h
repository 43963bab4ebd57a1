/*
 * sonde/sonde.h - umbrella header of sonde's C core.
 *
 * The core runs exec, HTTP, TCP, gRPC health and ICMP echo probes, and DNS
 * queries (dns.h), on one libevent loop and reports each outcome as a
 * struct sonde_result; it can be used from C without Lua.
 */
#ifndef SONDE_SONDE_H
#define SONDE_SONDE_H

#include "sonde/dns.h"
#include "sonde/exec.h"
#include "sonde/expand.h"
#include "sonde/expect.h"
#include "sonde/grpc.h"
#include "sonde/http.h"
#include "sonde/icmp.h"
#include "sonde/loop.h"
#include "sonde/pattern.h"
#include "sonde/pb.h"
#include "sonde/result.h"
#include "sonde/tcp.h"
#include "sonde/tls.h"

#ifndef SONDE_VERSION
#define SONDE_VERSION "0.1.0"
#endif

#endif
