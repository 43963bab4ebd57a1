/*
 * resolve.c - host names resolved on the loop, without a thread: libevent's
 * evdns (evdns_getaddrinfo), for the TCP prober.
 *
 * One evdns_base per loop, made at the loop's first lookup: name servers,
 * search list and options from /etc/resolv.conf (none there: 127.0.0.1),
 * addresses from /etc/hosts (unreadable: localhost alone).  Both files are
 * looked at again (stat) at a lookup at most every RECHECK seconds, as Go's
 * resolver does, and read again when they changed.  Name servers are
 * queried over UDP (one socket each, kept while the loop lives, watched
 * only while a query is out: EVDNS_BASE_DISABLE_WHEN_INACTIVE, so an idle
 * loop still ends); A and AAAA are asked for at once and IPv4 addresses
 * come first.  Query names keep their case (no 0x20 randomisation, which
 * some servers answer badly).  libevent's messages about its name servers
 * ("Nameserver ... has failed") go to libevent's log callback.
 *
 * Answered at once, without a query: a name in /etc/hosts; a name under
 * the reserved TLD "invalid" (RFC 6761 section 6.4: never resolves) and
 * a name with a ':' (no DNS name has one): no such host.
 *
 * Descriptors: the resolver cannot be made while the process has no
 * descriptor left (its files and sockets would silently be missing): the
 * lookup then fails with RESOURCE and the next one tries again.
 *
 * Lifetime: a lookup is malloc'd here and freed when evdns has called
 * back, even after a cancellation (evdns then calls back later, from the
 * loop, with EVUTIL_EAI_CANCEL, and sonde's callback is not called).  The
 * evdns_base is freed with the loop; on an event_base the loop does not
 * own, one loop iteration later, after evdns's queued notices of the
 * lookups the loop's end cancelled (they refer to it).  On the loop's own
 * base those notices are dropped with the base, unrun, and what they would
 * have freed is lost (about 1 KB per lookup still in flight then).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "internal.h"

#define RESOLV_CONF "/etc/resolv.conf"
#define HOSTS "/etc/hosts"
#define RECHECK 5.0   /* seconds between looks at the two files */

/* What tells a file's versions apart. */
struct file_id {
  int found;
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
};

struct sonde_resolver {
  struct evdns_base *dns;
  double checked;            /* sonde_now() of the last look at the files */
  struct file_id conf, hosts;
};

struct sonde_lookup {
  struct evdns_getaddrinfo_request *req;
  sonde_lookup_cb cb;        /* NULL once cancelled */
  void *arg;
  int sync;                  /* evdns_getaddrinfo is still running */
  int answered;              /* ... and has already called back */
};

static void file_id_of(const char *path, struct file_id *id) {
  struct stat st;
  memset(id, 0, sizeof *id);
  if (stat(path, &st) != 0) return;
  id->found = 1;
  id->dev = st.st_dev;
  id->ino = st.st_ino;
  id->size = st.st_size;
  id->mtime = st.st_mtim;
}

static int file_id_same(const struct file_id *a, const struct file_id *b) {
  return a->found == b->found && a->dev == b->dev && a->ino == b->ino &&
         a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
         a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Name servers, search list and options; returns 0 when all was read. */
static int load_conf(struct evdns_base *dns) {
  int rc = evdns_base_resolv_conf_parse(
      dns, DNS_OPTION_NAMESERVERS | DNS_OPTION_SEARCH | DNS_OPTION_MISC,
      RESOLV_CONF);
  evdns_base_set_option(dns, "randomize-case", "0");
  /* 6: no "nameserver" line (127.0.0.1 is used, as by libc) */
  if (rc == 6) rc = 0;
  return rc != 0 || evdns_base_count_nameservers(dns) == 0;
}

/* Read the files again if they changed since they were last read. */
static void recheck(struct sonde_resolver *r, double now) {
  struct file_id conf, hosts;
  r->checked = now;
  file_id_of(RESOLV_CONF, &conf);
  file_id_of(HOSTS, &hosts);
  if (!file_id_same(&conf, &r->conf)) {
    r->conf = conf;
    /* queries out wait, and are sent again to the new servers */
    evdns_base_clear_nameservers_and_suspend(r->dns);
    evdns_base_search_clear(r->dns);
    load_conf(r->dns);
    evdns_base_resume(r->dns);
  }
  if (!file_id_same(&hosts, &r->hosts)) {
    r->hosts = hosts;
    evdns_base_clear_host_addresses(r->dns);
    evdns_base_load_hosts(r->dns, HOSTS);
  }
}

/* The loop's resolver, made if need be; NULL with *err an errno when it
 * cannot be. */
static struct sonde_resolver *resolver(struct sonde_loop *loop, int *err) {
  struct sonde_resolver *r = loop->resolver;
  double now = sonde_now();
  if (r) {
    if (now - r->checked >= RECHECK) recheck(r, now);
    return r;
  }
  if ((*err = sonde_out_of_descriptors()) != 0) return NULL;
  r = calloc(1, sizeof *r);
  if (!r) {
    *err = ENOMEM;
    return NULL;
  }
  r->dns = evdns_base_new(loop->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
  if (!r->dns) {
    free(r);
    *err = ENOMEM;
    return NULL;
  }
  r->checked = now;
  file_id_of(RESOLV_CONF, &r->conf);
  file_id_of(HOSTS, &r->hosts);
  int short_of = load_conf(r->dns);
  short_of |= evdns_base_load_hosts(r->dns, HOSTS) != 0;
  /* a file or a socket missing for want of descriptors */
  if (short_of && (*err = sonde_out_of_descriptors()) != 0) {
    evdns_base_free(r->dns, 0);
    free(r);
    return NULL;
  }
  loop->resolver = r;
  return r;
}

/* A name no server can know: under "invalid" (RFC 6761), or with a ':'. */
static int never_resolves(const char *name) {
  static const char tld[] = "invalid";
  size_t k = sizeof tld - 1, n = strlen(name);
  if (strchr(name, ':')) return 1;
  if (n && name[n - 1] == '.') n--;
  if (n < k || strncasecmp(name + n - k, tld, k) != 0) return 0;
  return n == k || name[n - k - 1] == '.';
}

static void answer(struct sonde_lookup *lk, enum sonde_lookup_status st,
                   const char *why, int code, struct evutil_addrinfo *ai) {
  struct sonde_lookup_result res = {st, why, code, ai};
  lk->cb(&res, lk->arg);
}

static void on_answer(int err, struct evutil_addrinfo *ai, void *arg) {
  struct sonde_lookup *lk = arg;
  if (!lk->cb) {                       /* cancelled */
    if (ai) evutil_freeaddrinfo(ai);
    free(lk);
    return;
  }
  if (err == 0 && ai)
    answer(lk, SONDE_LOOKUP_OK, NULL, 0, ai);
  else if (err == 0 || err == EVUTIL_EAI_NONAME || err == EVUTIL_EAI_NODATA)
    answer(lk, SONDE_LOOKUP_NO_HOST, "no such host", 0, ai);
  else if (err == EVUTIL_EAI_MEMORY)
    answer(lk, SONDE_LOOKUP_RESOURCE, "out of memory", ENOMEM, NULL);
  else
    answer(lk, SONDE_LOOKUP_FAILED, evutil_gai_strerror(err), 0, NULL);
  if (lk->sync) lk->answered = 1;
  else free(lk);
}

struct sonde_lookup *sonde_lookup_start(struct sonde_loop *loop,
                                        const char *name, long port,
                                        sonde_lookup_cb cb, void *arg) {
  struct sonde_lookup one = {NULL, cb, arg, 1, 0};
  int err = 0;
  struct sonde_resolver *r = resolver(loop, &err);
  if (!r) {
    answer(&one, SONDE_LOOKUP_RESOURCE,
           err == ENOMEM ? "out of memory" : "out of file descriptors", err,
           NULL);
    return NULL;
  }
  if (never_resolves(name)) {
    answer(&one, SONDE_LOOKUP_NO_HOST, "no such host", 0, NULL);
    return NULL;
  }
  struct sonde_lookup *lk = malloc(sizeof *lk);
  if (!lk) {
    answer(&one, SONDE_LOOKUP_RESOURCE, "out of memory", ENOMEM, NULL);
    return NULL;
  }
  *lk = one;
  char serv[16];
  snprintf(serv, sizeof serv, "%ld", port);
  struct evutil_addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;     /* one entry per address */
  hints.ai_protocol = IPPROTO_TCP;
  lk->req = evdns_getaddrinfo(r->dns, name, serv, &hints, on_answer, lk);
  lk->sync = 0;
  if (lk->answered || !lk->req) {
    /* (no request and no answer cannot happen: evdns calls back at once
     * whenever it returns none) */
    if (!lk->answered)
      answer(lk, SONDE_LOOKUP_FAILED, "lookup not started", 0, NULL);
    free(lk);
    return NULL;
  }
  return lk;
}

void sonde_lookup_cancel(struct sonde_lookup *lk) {
  lk->cb = NULL;                       /* on_answer frees it */
  evdns_getaddrinfo_cancel(lk->req);
}

static void free_dns(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evdns_base_free(arg, 0);
}

void sonde_resolver_free(struct sonde_loop *loop) {
  struct sonde_resolver *r = loop->resolver;
  if (!r) return;
  loop->resolver = NULL;
  if (loop->own_base) {
    evdns_base_free(r->dns, 0);
  } else {
    /* its sockets and their events go now; the rest once the notices
     * queued before this are delivered (a 0 s timeout comes after them:
     * same priority, activated later).  Failing that, it is left. */
    evdns_base_clear_nameservers_and_suspend(r->dns);
    struct timeval now = {0, 0};
    event_base_once(loop->base, -1, EV_TIMEOUT, free_dns, r->dns, &now);
  }
  free(r);
}
