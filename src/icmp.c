/*
 * icmp.c - the ICMP echo prober (include/sonde/icmp.h): one echo request,
 * its reply awaited on the loop.
 *
 * Steps: the address (an IP literal at once, a name through resolve.c and
 * blackbox_exporter's chooseProtocol), the socket (datagram, else raw, or
 * the kind asked for; SOCK_NONBLOCK | SOCK_CLOEXEC; options; connect()ed
 * to the target, so that the kernel passes only what that address sends),
 * one send, then reads until the matching reply or the deadline.  One
 * event serves the lookup's deadline, a send that would block and the
 * reads; one deadline, start + timeout, bounds them all.
 *
 * Ownership: struct icmp_op owns its event (embedded), its socket, the
 * lookup in progress and one buffer (the request, then room for a reply:
 * the request's size plus an IPv4 header and one byte, so that a longer
 * reply shows as one); `release` frees them all, so a cancellation leaves
 * no descriptor.  An outcome known inside sonde_icmp_start is delivered
 * from the next loop iteration (sonde_op_complete_soon).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdarg.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/event_struct.h>
#include <event2/util.h>

#include "internal.h"
#include "sonde/icmp.h"

#define ICMP_HDR 8              /* type, code, checksum, id, sequence */
#define ICMP4_ECHO_REQUEST 8
#define ICMP4_ECHO_REPLY 0
#define ICMP6_REQUEST 128
#define ICMP6_REPLY 129
/* Linux: a raw IPv4 ICMP socket's filter of types (linux/icmp.h) */
#ifndef ICMP_FILTER
#define ICMP_FILTER 1
#endif
#ifndef SOL_RAW
#define SOL_RAW 255
#endif

/* blackbox_exporter's payload */
static const char PAYLOAD[] = "Prometheus Blackbox Exporter";

struct icmp_op {
  struct sonde_op op;
  struct event ev;                 /* lookup deadline, send, reads */
  int fd;                          /* the socket, or -1 */
  int starting;                    /* inside sonde_icmp_start */
  int raw;                         /* a raw socket (else datagram) */
  int family;                      /* AF_INET / AF_INET6 once chosen */
  double deadline;                 /* sonde_now() seconds */
  double t_setup, t_sent;          /* sonde_now() of the socket, the send */
  struct sonde_lookup *lookup;     /* in progress, or NULL */
  struct sockaddr_storage dst;
  socklen_t dstlen;
  uint16_t id, seq;                /* id: raw sockets only */
  struct sonde_icmp_opts o;        /* host and source_ip point below */
  unsigned char *buf;              /* the request (pktlen), then a reply */
  size_t pktlen, buflen;
  char addr[INET6_ADDRSTRLEN + 1 + IF_NAMESIZE]; /* the target, as text */
  char strings[];                  /* host, then source_ip */
};

/* The identifier of this process's raw sockets and the next sequence
 * (blackbox_exporter: the pid, random when it is 1; a random start). */
static uint16_t proc_id;
static uint16_t next_seq;
static int ids_ready;

static void ids_init(void) {
  if (ids_ready) return;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  unsigned r = (unsigned)ts.tv_nsec ^ (unsigned)ts.tv_sec ^
               ((unsigned)getpid() << 16);
  r = r * 2654435761u;
  pid_t pid = getpid();
  proc_id = (uint16_t)(pid == 1 ? (r >> 16) : (unsigned)pid);
  next_seq = (uint16_t)r;
  ids_ready = 1;
}

static void ev_clear(struct icmp_op *t) {
  if (event_initialized(&t->ev)) event_del(&t->ev);
}

static void icmp_release(struct sonde_op *op, int cancelled) {
  struct icmp_op *t = (struct icmp_op *)op;
  (void)cancelled;
  ev_clear(t);
  if (t->fd >= 0) close(t->fd);
  t->fd = -1;
  if (t->lookup) sonde_lookup_cancel(t->lookup);
  t->lookup = NULL;
  free(t->buf);
  t->buf = NULL;
}

static const struct sonde_op_vtable icmp_vt = {"icmp", icmp_release};

void sonde_icmp_opts_init(struct sonde_icmp_opts *o) {
  memset(o, 0, sizeof *o);
  o->ip_protocol = 6;
  o->fallback = 1;
  o->ttl = SONDE_ICMP_DEFAULT_TTL;
  o->timeout = 1;
}

/* ---- the result ----------------------------------------------------------- */

/* strerror, lowercase first letter (Go's words). */
static const char *err_text(int e, char *buf, size_t n) {
  const char *s = strerror_r(e, buf, n);
  if (s != buf) snprintf(buf, n, "%s", s);
  if (buf[0] >= 'A' && buf[0] <= 'Z') buf[0] = (char)(buf[0] - 'A' + 'a');
  return buf;
}

/* Complete now, or from the next iteration when inside the start. */
static void done(struct icmp_op *t) {
  struct sonde_result *r = &t->op.res;
  ev_clear(t);
  if (t->fd >= 0) close(t->fd);
  t->fd = -1;
  if (r->error && !r->output) {
    size_t n = strlen(r->error);
    sonde_result_set_output(r, r->error, n);
  }
  if (t->starting) sonde_op_complete_soon(&t->op);
  else sonde_op_complete(&t->op);
}

static void fail(struct icmp_op *t, sonde_status st, sonde_reason reason,
                 int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void fail(struct icmp_op *t, sonde_status st, sonde_reason reason,
                 int code, const char *fmt, ...) {
  struct sonde_result *r = &t->op.res;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  r->status = st;
  r->reason = reason;
  r->code = code;
  sonde_result_set_error(r, "%s", msg);
  if (r->error) sonde_clean_text(&r->error, NULL);
  done(t);
}

/* A system call failed on the way: resource (unknown) or network. */
static void fail_errno(struct icmp_op *t, const char *call, int e) {
  char b[128];
  if (sonde_resource_errno(e))
    fail(t, SONDE_UNKNOWN, SONDE_R_RESOURCE, e, "icmp %s: %s: %s", t->addr,
         call, strerror(e));
  else
    fail(t, SONDE_FAILURE, SONDE_R_NETWORK, e, "icmp %s: %s: %s", t->addr,
         call, err_text(e, b, sizeof b));
}

/* Neither socket allowed: say what would allow one. */
static void fail_permission(struct icmp_op *t, int e) {
  char range[64] = "unknown";
  FILE *f = fopen("/proc/sys/net/ipv4/ping_group_range", "re");
  if (f) {
    if (fgets(range, sizeof range, f)) {
      range[strcspn(range, "\n")] = '\0';
      for (char *p = range; *p; p++)
        if (*p == '\t') *p = ' ';
    }
    fclose(f);
  }
  const char *raw_only =
      t->o.socket == SONDE_ICMP_RAW
          ? "a raw socket was asked for"
          : t->o.dont_fragment && t->family == AF_INET
                ? "dont_fragment needs a raw socket"
                : NULL;
  if (raw_only)
    fail(t, SONDE_FAILURE, SONDE_R_PERMISSION, e,
         "icmp %s: cannot open a raw ICMP socket (%s): run as root or give "
         "the program CAP_NET_RAW (setcap cap_net_raw+ep PROGRAM)",
         t->addr, raw_only);
  else if (t->o.socket == SONDE_ICMP_DGRAM)
    fail(t, SONDE_FAILURE, SONDE_R_PERMISSION, e,
         "icmp %s: cannot open an unprivileged ICMP socket: the process's "
         "group (gid %u) is not inside net.ipv4.ping_group_range (now %s; "
         "e.g. sysctl -w net.ipv4.ping_group_range='0 2147483647')",
         t->addr, (unsigned)getgid(), range);
  else
    fail(t, SONDE_FAILURE, SONDE_R_PERMISSION, e,
         "icmp %s: no permission to open an ICMP socket: the process's group "
         "(gid %u) is not inside net.ipv4.ping_group_range (now %s; e.g. "
         "sysctl -w net.ipv4.ping_group_range='0 2147483647'), and a raw "
         "socket needs root or CAP_NET_RAW (setcap cap_net_raw+ep PROGRAM)",
         t->addr, (unsigned)getgid(), range);
}

/* ---- the exchange --------------------------------------------------------- */

static uint16_t checksum(const unsigned char *p, size_t n) {
  uint32_t sum = 0;
  for (; n > 1; p += 2, n -= 2) sum += (uint32_t)(p[0] << 8 | p[1]);
  if (n) sum += (uint32_t)(p[0] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

static void on_io(evutil_socket_t fd, short what, void *arg);

/* Wait for `what` on the socket until the deadline. */
static void wait_io(struct icmp_op *t, short what) {
  double left = t->deadline - sonde_now();
  if (left < 0) left = 0;
  ev_clear(t);
  event_assign(&t->ev, t->op.loop->base, t->fd, what, on_io, t);
  if (sonde_loop_add_timer(t->op.loop, &t->ev, left) != 0)
    fail(t, SONDE_UNKNOWN, SONDE_R_RESOURCE, 0, "icmp %s: cannot watch the "
         "socket", t->addr);
}

/* The reply is in: the result, then complete. */
static void matched(struct icmp_op *t, int hops) {
  struct sonde_result *r = &t->op.res;
  double now = sonde_now();
  r->status = SONDE_SUCCESS;
  r->reason = SONDE_R_OK;
  r->icmp_rtt = now - t->t_sent;
  r->icmp_reply_ttl = hops;
  char out[256];
  int n;
  if (hops >= 0)
    n = snprintf(out, sizeof out, "echo reply from %s in %.6f s (seq %u, hop "
                 "limit %d)", t->addr, r->icmp_rtt, (unsigned)t->seq, hops);
  else
    n = snprintf(out, sizeof out, "echo reply from %s in %.6f s (seq %u)",
                 t->addr, r->icmp_rtt, (unsigned)t->seq);
  sonde_result_set_output(r, out, (size_t)n);
  done(t);
}

/* Is this packet (ICMP message at p, n bytes) our reply? */
static int is_reply(struct icmp_op *t, const unsigned char *p, size_t n) {
  if (n != t->pktlen) return 0;
  if (p[0] != (t->family == AF_INET ? ICMP4_ECHO_REPLY : ICMP6_REPLY) ||
      p[1] != 0)
    return 0;
  if ((uint16_t)(p[6] << 8 | p[7]) != t->seq) return 0;
  if (t->raw && (uint16_t)(p[4] << 8 | p[5]) != t->id) return 0;
  if (t->raw && t->family == AF_INET && checksum(p, n) != 0) return 0;
  return memcmp(p + ICMP_HDR, t->buf + ICMP_HDR, n - ICMP_HDR) == 0;
}

static int same_source(struct icmp_op *t, const struct sockaddr_storage *from,
                       socklen_t len) {
  if (from->ss_family != t->family || len == 0) return 0;
  if (t->family == AF_INET)
    return ((const struct sockaddr_in *)from)->sin_addr.s_addr ==
           ((const struct sockaddr_in *)&t->dst)->sin_addr.s_addr;
  return memcmp(&((const struct sockaddr_in6 *)from)->sin6_addr,
                &((const struct sockaddr_in6 *)&t->dst)->sin6_addr,
                sizeof(struct in6_addr)) == 0;
}

/* Read what is there; returns when the op has ended or must wait. */
static void read_replies(struct icmp_op *t) {
  unsigned char *rb = t->buf + t->pktlen;
  size_t cap = t->buflen - t->pktlen;
  /* bounded per wake-up: a raw socket of a busy host sees every echo
   * reply (the event fires again for the rest) */
  for (int reads = 0; reads < 256; reads++) {
    struct sockaddr_storage from;
    union {
      char b[CMSG_SPACE(sizeof(int)) * 2];
      struct cmsghdr align;
    } ctl;
    struct iovec iov = {rb, cap};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_name = &from;
    m.msg_namelen = sizeof from;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.b;
    m.msg_controllen = sizeof ctl.b;
    ssize_t n = recvmsg(t->fd, &m, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        wait_io(t, EV_READ);
        return;
      }
      /* an error the socket queued (an ICMP error for a connected
       * socket): blackbox_exporter reads on until the deadline */
      if (sonde_resource_errno(errno)) break;
      continue;
    }
    if (m.msg_flags & MSG_TRUNC) continue;       /* longer than ours */
    if (!same_source(t, &from, m.msg_namelen)) continue;
    int hops = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
      if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL) ||
          (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_HOPLIMIT)) {
        int v;
        memcpy(&v, CMSG_DATA(c), sizeof v);
        hops = v;
      }
    }
    const unsigned char *p = rb;
    size_t len = (size_t)n;
    if (t->raw && t->family == AF_INET) {      /* the IP header first */
      if (len < 20) continue;
      size_t ihl = (size_t)(p[0] & 0x0f) * 4;
      if ((p[0] >> 4) != 4 || ihl < 20 || ihl > len) continue;
      if (hops < 0) hops = p[8];
      p += ihl;
      len -= ihl;
    }
    if (is_reply(t, p, len)) {
      matched(t, hops);
      return;
    }
  }
  wait_io(t, EV_READ);
}

static void send_request(struct icmp_op *t) {
  for (;;) {
    t->t_sent = sonde_now();
    ssize_t n = send(t->fd, t->buf, t->pktlen, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) break;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      wait_io(t, EV_WRITE);
      return;
    }
    fail_errno(t, "sendto", errno);
    return;
  }
  read_replies(t);
}

static void on_io(evutil_socket_t fd, short what, void *arg) {
  struct icmp_op *t = arg;
  (void)fd;
  if (what & EV_TIMEOUT) {
    fail(t, SONDE_FAILURE, SONDE_R_TIMEOUT, ETIMEDOUT,
         "icmp %s: no echo reply by the deadline: i/o timeout", t->addr);
    return;
  }
  if (what & EV_WRITE) send_request(t);
  else read_replies(t);
}

/* Open the socket: raw (1) or datagram (0).  Returns the fd or -1. */
static int open_socket(struct icmp_op *t, int raw) {
  int proto = t->family == AF_INET ? IPPROTO_ICMP : IPPROTO_ICMPV6;
  return socket(t->family,
                (raw ? SOCK_RAW : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC,
                proto);
}

static int perm_errno(int e) {
  return e == EPERM || e == EACCES || e == EPROTONOSUPPORT ||
         e == ESOCKTNOSUPPORT;
}

/* The address is chosen: socket, options, send. */
static void exchange(struct icmp_op *t) {
  struct sonde_result *r = &t->op.res;
  t->t_setup = sonde_now();
  r->ip_protocol = t->family == AF_INET ? 4 : 6;
  /* the source first: its family must be the target's */
  struct sockaddr_storage src;
  socklen_t srclen = 0;
  memset(&src, 0, sizeof src);
  if (t->o.source_ip) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&src;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src;
    if (t->family == AF_INET &&
        inet_pton(AF_INET, t->o.source_ip, &s4->sin_addr) == 1) {
      s4->sin_family = AF_INET;
      srclen = sizeof *s4;
    } else if (t->family == AF_INET6 &&
               inet_pton(AF_INET6, t->o.source_ip, &s6->sin6_addr) == 1) {
      s6->sin6_family = AF_INET6;
      s6->sin6_scope_id =
          ((const struct sockaddr_in6 *)&t->dst)->sin6_scope_id;
      srclen = sizeof *s6;
    } else {
      fail(t, SONDE_FAILURE, SONDE_R_CONFIG, 0,
           "icmp %s: source_ip_address %s is not an IPv%d address", t->addr,
           t->o.source_ip, r->ip_protocol);
      return;
    }
  }
  int raw_only = t->o.socket == SONDE_ICMP_RAW ||
                 (t->o.dont_fragment && t->family == AF_INET);
  int fd = -1, e = 0;
  if (!raw_only) {
    fd = open_socket(t, 0);
    if (fd < 0) e = errno;
    t->raw = 0;
  }
  if (fd < 0 && t->o.socket != SONDE_ICMP_DGRAM &&
      (raw_only || perm_errno(e))) {
    fd = open_socket(t, 1);
    if (fd < 0) e = errno;
    t->raw = 1;
  }
  if (fd < 0) {
    if (perm_errno(e)) fail_permission(t, e);
    else fail_errno(t, "socket", e);
    return;
  }
  t->fd = fd;
  r->icmp_socket = t->raw ? 2 : 1;
  int one = 1;
  if (t->family == AF_INET) {
    setsockopt(fd, IPPROTO_IP, IP_RECVTTL, &one, sizeof one);
    if (t->o.ttl > 0 &&
        setsockopt(fd, IPPROTO_IP, IP_TTL, &t->o.ttl, sizeof t->o.ttl) != 0) {
      fail_errno(t, "setsockopt IP_TTL", errno);
      return;
    }
    if (t->o.dont_fragment) {
      int pmtu = IP_PMTUDISC_DO;
      if (setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu)) {
        fail_errno(t, "setsockopt IP_MTU_DISCOVER", errno);
        return;
      }
    }
    if (t->raw) {                    /* echo replies only */
      uint32_t mask = ~(1u << ICMP4_ECHO_REPLY);
      setsockopt(fd, SOL_RAW, ICMP_FILTER, &mask, sizeof mask);
    }
  } else {
    setsockopt(fd, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, &one, sizeof one);
    if (t->o.ttl > 0 && setsockopt(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS,
                                   &t->o.ttl, sizeof t->o.ttl) != 0) {
      fail_errno(t, "setsockopt IPV6_UNICAST_HOPS", errno);
      return;
    }
    if (t->raw) {
      struct icmp6_filter f;
      ICMP6_FILTER_SETBLOCKALL(&f);
      ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &f);
      setsockopt(fd, IPPROTO_ICMPV6, ICMP6_FILTER, &f, sizeof f);
    }
  }
  if (srclen && bind(fd, (struct sockaddr *)&src, srclen) != 0) {
    char b[128];
    int be = errno;
    fail(t, sonde_resource_errno(be) ? SONDE_UNKNOWN : SONDE_FAILURE,
         sonde_resource_errno(be) ? SONDE_R_RESOURCE : SONDE_R_NETWORK, be,
         "icmp %s: bind %s: %s", t->addr, t->o.source_ip,
         err_text(be, b, sizeof b));
    return;
  }
  /* the kernel passes this socket only what the target sends */
  if (connect(fd, (struct sockaddr *)&t->dst, t->dstlen) != 0) {
    fail_errno(t, "connect", errno);
    return;
  }
  /* the request, and room for a reply after it */
  size_t plen = t->o.payload_size ? t->o.payload_size : sizeof PAYLOAD - 1;
  t->pktlen = ICMP_HDR + plen;
  t->buflen = 2 * t->pktlen + 60 + 1;
  t->buf = calloc(1, t->buflen);
  if (!t->buf) {
    fail(t, SONDE_UNKNOWN, SONDE_R_RESOURCE, ENOMEM, "icmp %s: out of memory",
         t->addr);
    return;
  }
  unsigned char *p = t->buf;
  p[0] = t->family == AF_INET ? ICMP4_ECHO_REQUEST : ICMP6_REQUEST;
  p[4] = (unsigned char)(t->id >> 8);
  p[5] = (unsigned char)t->id;
  p[6] = (unsigned char)(t->seq >> 8);
  p[7] = (unsigned char)t->seq;
  memcpy(p + ICMP_HDR, PAYLOAD,
         plen < sizeof PAYLOAD - 1 ? plen : sizeof PAYLOAD - 1);
  if (t->family == AF_INET) {        /* (IPv6: the kernel's, with the
                                        pseudo-header; datagram: too) */
    uint16_t c = checksum(p, t->pktlen);
    p[2] = (unsigned char)(c >> 8);
    p[3] = (unsigned char)c;
  }
  r->icmp_setup = sonde_now() - t->t_setup;
  send_request(t);
}

/* blackbox_exporter's probe_ip_addr_hash: FNV-1a 32 of the address. */
static uint32_t fnv1a(const unsigned char *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 16777619u;
  }
  return h;
}

/* The address is chosen (t->dst): its text and hash, then the exchange. */
static void chosen(struct icmp_op *t) {
  struct sonde_result *r = &t->op.res;
  if (t->family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)&t->dst;
    inet_ntop(AF_INET, &in->sin_addr, t->addr, sizeof t->addr);
    r->icmp_addr_hash = fnv1a((const unsigned char *)&in->sin_addr, 4);
  } else {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&t->dst;
    inet_ntop(AF_INET6, &in6->sin6_addr, t->addr, INET6_ADDRSTRLEN);
    if (in6->sin6_scope_id) {
      size_t n = strlen(t->addr);
      char name[IF_NAMESIZE];
      if (if_indextoname(in6->sin6_scope_id, name))
        snprintf(t->addr + n, sizeof t->addr - n, "%%%s", name);
      else
        snprintf(t->addr + n, sizeof t->addr - n, "%%%u",
                 (unsigned)in6->sin6_scope_id);
    }
    r->icmp_addr_hash = fnv1a((const unsigned char *)&in6->sin6_addr, 16);
  }
  snprintf(r->remote_addr, sizeof r->remote_addr, "%s", t->addr);
  exchange(t);
}

/* chooseProtocol over a list of addresses: 1 with t->dst set, else 0. */
static int choose(struct icmp_op *t, const struct sockaddr *const *sa,
                  const socklen_t *len, size_t n) {
  int want = t->o.ip_protocol == 4 ? AF_INET : AF_INET6;
  size_t pick = n;
  for (size_t i = 0; i < n && pick == n; i++)
    if (sa[i]->sa_family == want) pick = i;
  if (pick == n && t->o.fallback)
    for (size_t i = 0; i < n && pick == n; i++)
      if (sa[i]->sa_family == AF_INET || sa[i]->sa_family == AF_INET6)
        pick = i;
  if (pick == n) return 0;
  memcpy(&t->dst, sa[pick], len[pick]);
  t->dstlen = len[pick];
  t->family = sa[pick]->sa_family;
  if (t->family == AF_INET) ((struct sockaddr_in *)&t->dst)->sin_port = 0;
  else ((struct sockaddr_in6 *)&t->dst)->sin6_port = 0;
  return 1;
}

static void no_suitable(struct icmp_op *t) {
  fail(t, SONDE_FAILURE, SONDE_R_DNS, 0,
       "lookup %s: no suitable address found (ip_protocol ip%d, no "
       "fallback)", t->o.host, t->o.ip_protocol == 4 ? 4 : 6);
}

static void on_lookup(struct sonde_lookup_result *res, void *arg) {
  struct icmp_op *t = arg;
  t->lookup = NULL;
  ev_clear(t);                       /* the lookup's deadline */
  t->op.res.icmp_resolve = sonde_now() - t->op.start;
  if (res->status != SONDE_LOOKUP_OK) {
    int resource = res->status == SONDE_LOOKUP_RESOURCE;
    if (res->ai) evutil_freeaddrinfo(res->ai);
    fail(t, resource ? SONDE_UNKNOWN : SONDE_FAILURE,
         resource ? SONDE_R_RESOURCE : SONDE_R_DNS, res->code,
         "lookup %s: %s", t->o.host, res->why ? res->why : "no such host");
    return;
  }
  const struct sockaddr *sa[64];
  socklen_t len[64];
  size_t n = 0;
  for (struct evutil_addrinfo *ai = res->ai; ai && n < 64; ai = ai->ai_next) {
    sa[n] = ai->ai_addr;
    len[n++] = (socklen_t)ai->ai_addrlen;
  }
  int ok = choose(t, sa, len, n);
  evutil_freeaddrinfo(res->ai);
  if (!ok) {
    no_suitable(t);
    return;
  }
  chosen(t);
}

static void on_lookup_timeout(evutil_socket_t fd, short what, void *arg) {
  struct icmp_op *t = arg;
  (void)fd;
  (void)what;
  sonde_lookup_cancel(t->lookup);
  t->lookup = NULL;
  t->op.res.icmp_resolve = sonde_now() - t->op.start;
  fail(t, SONDE_FAILURE, SONDE_R_DNS, ETIMEDOUT, "lookup %s: i/o timeout",
       t->o.host);
}

/* An IP literal into *ss; 1 when it is one.  An IPv4-mapped IPv6 address
 * gives its IPv4 address. */
static int parse_literal(const char *host, struct sockaddr_storage *ss,
                         socklen_t *len) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *in = (struct sockaddr_in *)ss;
  if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    *len = sizeof *in;
    return 1;
  }
  if (!strchr(host, ':')) return 0;
  char buf[INET6_ADDRSTRLEN];
  const char *pct = strchr(host, '%');
  size_t n = pct ? (size_t)(pct - host) : strlen(host);
  if (n >= sizeof buf) return 0;
  memcpy(buf, host, n);
  buf[n] = '\0';
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET6, buf, &in6->sin6_addr) != 1) return 0;
  if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
    /* ::ffff:a.b.c.d is a.b.c.d (Go's To4, as blackbox_exporter's
     * chooseProtocol takes it): echoed over ICMPv4 */
    struct in_addr a4;
    memcpy(&a4, &in6->sin6_addr.s6_addr[12], sizeof a4);
    memset(ss, 0, sizeof *ss);
    in->sin_family = AF_INET;
    in->sin_addr = a4;
    *len = sizeof *in;
    return 1;
  }
  in6->sin6_family = AF_INET6;
  if (pct) {
    char *end;
    unsigned long idx = strtoul(pct + 1, &end, 10);
    in6->sin6_scope_id = pct[1] && *end == '\0'
                             ? (uint32_t)idx
                             : if_nametoindex(pct + 1);
  }
  *len = sizeof *in6;
  return 1;
}

uint64_t sonde_icmp_start(struct sonde_loop *loop,
                          const struct sonde_icmp_opts *o, sonde_result_cb cb,
                          void *arg) {
  size_t hlen = strlen(o->host), slen = o->source_ip ? strlen(o->source_ip) : 0;
  struct icmp_op *t = calloc(1, sizeof *t + hlen + 1 + slen + 1);
  if (!t) return 0;
  ids_init();
  t->o = *o;
  memcpy(t->strings, o->host, hlen + 1);
  t->o.host = t->strings;
  if (o->source_ip) {
    memcpy(t->strings + hlen + 1, o->source_ip, slen + 1);
    t->o.source_ip = t->strings + hlen + 1;
  }
  if (t->o.payload_size > SONDE_ICMP_PAYLOAD_MAX)
    t->o.payload_size = SONDE_ICMP_PAYLOAD_MAX;
  t->op.vt = &icmp_vt;
  t->fd = -1;
  t->id = proc_id;
  t->seq = __atomic_add_fetch(&next_seq, 1, __ATOMIC_RELAXED);
  snprintf(t->addr, sizeof t->addr, "%s", t->o.host);
  uint64_t id = sonde_op_start(loop, &t->op, cb, arg);
  t->op.res.icmp_reply_ttl = -1;
  double secs = o->timeout > SONDE_MAX_SECONDS ? SONDE_MAX_SECONDS : o->timeout;
  if (!(secs > 0)) secs = 0;
  t->deadline = t->op.start + secs;
  t->starting = 1;
  struct sockaddr_storage lit;
  socklen_t litlen = 0;
  if (parse_literal(t->o.host, &lit, &litlen)) {
    const struct sockaddr *sa = (const struct sockaddr *)&lit;
    if (choose(t, &sa, &litlen, 1)) chosen(t);
    else no_suitable(t);
  } else {
    struct sonde_lookup *lk =
        sonde_lookup_start(loop, t->o.host, 0, on_lookup, t);
    if (lk) {                        /* no answer yet: wait until the deadline */
      t->lookup = lk;
      event_assign(&t->ev, loop->base, -1, 0, on_lookup_timeout, t);
      if (sonde_loop_add_timer(loop, &t->ev, t->deadline - sonde_now()) != 0) {
        sonde_lookup_cancel(lk);
        t->lookup = NULL;
        fail(t, SONDE_UNKNOWN, SONDE_R_RESOURCE, 0, "lookup %s: cannot watch "
             "the deadline", t->o.host);
      }
    }
  }
  t->starting = 0;
  return id;
}
