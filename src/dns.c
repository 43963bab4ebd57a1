/*
 * dns.c - the DNS prober (include/sonde/dns.h), with c-ares on the loop.
 *
 * One c-ares channel per probe, made at the start with everything set by
 * options (so that c-ares reads no /etc/resolv.conf): one server (the
 * probe's), one try, no search list, ARES_FLAG_NOCHECKRESP (a SERVFAIL or
 * REFUSED reply is handed over, not taken for a server failure),
 * ARES_FLAG_IGNTC (a truncated UDP reply is not retried over TCP),
 * ARES_FLAG_USEVC for TCP.  The query is built with ares_create_query (no
 * EDNS record) and sent with ares_send; the raw reply is parsed here.
 *
 * The channel's sockets are watched through its socket-state callback:
 * one event per socket (a few slots, embedded in the op), and c-ares's own
 * timeouts through one timer re-armed after each ares_process_fd.  The
 * probe's deadline is a timer of its own; c-ares's timeout is set a second
 * past it, so that the deadline decides.  c-ares calls back from inside
 * ares_send or ares_process_fd: the callback only records the outcome,
 * and the operation ends after that call has returned.
 *
 * Ownership: struct dns_op owns the channel (and through it its sockets),
 * the events watching them, the two timers, the reply bytes and the
 * compiled regexps; `teardown` destroys the channel (its pending query is
 * called back with ARES_EDESTRUCTION, ignored) and deletes every event.  It
 * runs as soon as the outcome is known, and again (doing nothing) from
 * release; a cancellation releases the same way.  The result's reply
 * facts (struct sonde_dns_reply) move into the result.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <ares.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "internal.h"
#include "sonde/dns.h"

#define SOCK_SLOTS 4       /* sockets of one channel watched at once */
#define NAME_MAX_TEXT 1100 /* a name's text: 255 bytes, 4 per byte at most */
#define RR_MAX 65535       /* records parsed per section at most */

/* ---- names of types, classes and rcodes (miekg/dns) --------------------- */

static const struct { int num; const char *name; } TYPES[] = {
    {1, "A"},          {2, "NS"},        {3, "MD"},          {4, "MF"},
    {5, "CNAME"},      {6, "SOA"},       {7, "MB"},          {8, "MG"},
    {9, "MR"},         {10, "NULL"},     {12, "PTR"},        {13, "HINFO"},
    {14, "MINFO"},     {15, "MX"},       {16, "TXT"},        {17, "RP"},
    {18, "AFSDB"},     {19, "X25"},      {20, "ISDN"},       {21, "RT"},
    {23, "NSAP-PTR"},  {24, "SIG"},      {25, "KEY"},        {26, "PX"},
    {27, "GPOS"},      {28, "AAAA"},     {29, "LOC"},        {30, "NXT"},
    {31, "EID"},       {32, "NIMLOC"},   {33, "SRV"},        {34, "ATMA"},
    {35, "NAPTR"},     {36, "KX"},       {37, "CERT"},       {39, "DNAME"},
    {41, "OPT"},       {42, "APL"},      {43, "DS"},         {44, "SSHFP"},
    {45, "IPSECKEY"},  {46, "RRSIG"},    {47, "NSEC"},       {48, "DNSKEY"},
    {49, "DHCID"},     {50, "NSEC3"},    {51, "NSEC3PARAM"}, {52, "TLSA"},
    {53, "SMIMEA"},    {55, "HIP"},      {56, "NINFO"},      {57, "RKEY"},
    {58, "TALINK"},    {59, "CDS"},      {60, "CDNSKEY"},    {61, "OPENPGPKEY"},
    {62, "CSYNC"},     {63, "ZONEMD"},   {64, "SVCB"},       {65, "HTTPS"},
    {99, "SPF"},       {100, "UINFO"},   {101, "UID"},       {102, "GID"},
    {103, "UNSPEC"},   {104, "NID"},     {105, "L32"},       {106, "L64"},
    {107, "LP"},       {108, "EUI48"},   {109, "EUI64"},     {249, "TKEY"},
    {250, "TSIG"},     {251, "IXFR"},    {252, "AXFR"},      {253, "MAILB"},
    {254, "MAILA"},    {255, "ANY"},     {256, "URI"},       {257, "CAA"},
    {258, "AVC"},      {32768, "TA"},    {32769, "DLV"},
};

static const struct { int num; const char *name; } CLASSES[] = {
    {1, "IN"}, {2, "CS"}, {3, "CH"}, {4, "HS"}, {254, "NONE"}, {255, "ANY"},
};

static const struct { int num; const char *name; } RCODES[] = {
    {0, "NOERROR"},   {1, "FORMERR"},  {2, "SERVFAIL"},  {3, "NXDOMAIN"},
    {4, "NOTIMP"},    {5, "REFUSED"},  {6, "YXDOMAIN"},  {7, "YXRRSET"},
    {8, "NXRRSET"},   {9, "NOTAUTH"},  {10, "NOTZONE"},  {16, "BADSIG"},
    {17, "BADKEY"},   {18, "BADTIME"}, {19, "BADMODE"},  {20, "BADNAME"},
    {21, "BADALG"},   {22, "BADTRUNC"}, {23, "BADCOOKIE"},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* "PREFIX123" -> 123 (0..65535), else -1 */
static int numbered(const char *s, const char *prefix) {
  size_t n = strlen(prefix);
  if (strncmp(s, prefix, n) != 0 || !s[n]) return -1;
  long v = 0;
  for (const char *p = s + n; *p; p++) {
    if (!isdigit((unsigned char)*p) || v > 65535) return -1;
    v = v * 10 + (*p - '0');
  }
  return v <= 65535 ? (int)v : -1;
}

int sonde_dns_type(const char *name) {
  for (size_t i = 0; i < COUNT(TYPES); i++)
    if (strcmp(TYPES[i].name, name) == 0) return TYPES[i].num;
  return numbered(name, "TYPE");
}

const char *sonde_dns_type_name(int type) {
  for (size_t i = 0; i < COUNT(TYPES); i++)
    if (TYPES[i].num == type) return TYPES[i].name;
  return NULL;
}

int sonde_dns_class(const char *name) {
  for (size_t i = 0; i < COUNT(CLASSES); i++)
    if (strcmp(CLASSES[i].name, name) == 0) return CLASSES[i].num;
  return numbered(name, "CLASS");
}

static const char *class_name(int c) {
  for (size_t i = 0; i < COUNT(CLASSES); i++)
    if (CLASSES[i].num == c) return CLASSES[i].name;
  return NULL;
}

int sonde_dns_rcode(const char *name) {
  if (strcmp(name, "NOTIMPL") == 0) return 4;
  for (size_t i = 0; i < COUNT(RCODES); i++)
    if (strcmp(RCODES[i].name, name) == 0) return RCODES[i].num;
  return -1;
}

const char *sonde_dns_rcode_name(int rcode) {
  for (size_t i = 0; i < COUNT(RCODES); i++)
    if (RCODES[i].num == rcode) return RCODES[i].name;
  return NULL;
}

void sonde_dns_opts_init(struct sonde_dns_opts *o) {
  memset(o, 0, sizeof *o);
  o->port = 53;
  o->qtype = 255;
  o->qclass = 1;
  o->transport = SONDE_DNS_UDP;
  o->recursion_desired = 1;
  o->timeout = 1;
}

/* ---- a growing text buffer ---------------------------------------------- */

struct sbuf {
  char *p;
  size_t len, cap;
  int oom;
};

static void sb_grow(struct sbuf *b, size_t more) {
  if (b->oom || b->len + more + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < b->len + more + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    b->oom = 1;
    return;
  }
  b->p = p;
  b->cap = cap;
}

static void sb_put(struct sbuf *b, const char *s, size_t n) {
  sb_grow(b, n);
  if (b->oom) return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_putc(struct sbuf *b, char c) { sb_put(b, &c, 1); }
static void sb_puts(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_printf(struct sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) {
    sb_put(b, tmp, (size_t)n);
    return;
  }
  sb_grow(b, (size_t)n);
  if (b->oom) return;
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/* ---- regular expressions ------------------------------------------------ */

/* Compile a POSIX ERE into *rx: 0, or -1 with err. */
static int compile(regex_t *rx, const char *re, char *err, size_t n) {
  int rc = regcomp(rx, re, REG_EXTENDED | REG_NOSUB);
  if (rc != 0) {
    regerror(rc, rx, err, n);
    return -1;
  }
  return 0;
}

int sonde_dns_regex_check(const char *re, char *err, size_t n) {
  regex_t rx;
  if (compile(&rx, re, err, n) != 0) return -1;
  regfree(&rx);
  return 0;
}

/* ---- the reply ---------------------------------------------------------- */

void sonde_dns_reply_free(struct sonde_dns_reply *r) {
  if (!r) return;
  for (int s = 0; s < SONDE_DNS_SECTIONS; s++) {
    for (size_t i = 0; i < r->count[s]; i++) free(r->rrs[s][i]);
    free(r->rrs[s]);
  }
  free(r);
}

struct msg {
  const unsigned char *p;
  size_t len;
};

static unsigned u16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }
static uint32_t u32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* One byte of a name's label (miekg/dns sprintName). */
static void name_byte(struct sbuf *b, unsigned char c) {
  if (c == '.' || c == ' ' || c == '\'' || c == '@' || c == ';' || c == '(' ||
      c == ')' || c == '"' || c == '\\') {
    sb_putc(b, '\\');
    sb_putc(b, (char)c);
  } else if (c < ' ' || c > '~') {
    sb_printf(b, "\\%03u", c);
  } else {
    sb_putc(b, (char)c);
  }
}

/* One byte of a character string (miekg/dns sprintTxt). */
static void txt_byte(struct sbuf *b, unsigned char c) {
  if (c == '"' || c == '\\') {
    sb_putc(b, '\\');
    sb_putc(b, (char)c);
  } else if (c < ' ' || c > '~') {
    sb_printf(b, "\\%03u", c);
  } else {
    sb_putc(b, (char)c);
  }
}

/* Read the (possibly compressed) name at *off, append its text to b and
 * move *off past it.  Returns 0, or -1 when malformed. */
static int read_name(const struct msg *m, size_t *off, struct sbuf *b) {
  size_t o = *off, wire = 0;
  int jumped = 0, hops = 0, labels = 0;
  for (;;) {
    if (o >= m->len) return -1;
    unsigned c = m->p[o];
    if ((c & 0xC0) == 0xC0) {
      if (o + 1 >= m->len || ++hops > 126) return -1;
      if (!jumped) *off = o + 2;
      jumped = 1;
      o = (c & 0x3F) << 8 | m->p[o + 1];
      continue;
    }
    if (c & 0xC0) return -1;            /* extended label types */
    if (c == 0) {
      if (!jumped) *off = o + 1;
      if (labels == 0) sb_putc(b, '.');
      return 0;
    }
    if (o + 1 + c > m->len) return -1;
    wire += c + 1;
    if (wire > 254) return -1;          /* 255 with the root */
    for (unsigned i = 0; i < c; i++) name_byte(b, m->p[o + 1 + i]);
    sb_putc(b, '.');
    labels++;
    o += 1 + c;
  }
}

/* A character string at rd[*i] (length byte then bytes), quoted. */
static int read_string(const unsigned char *rd, size_t rdlen, size_t *i,
                       struct sbuf *b) {
  if (*i >= rdlen) return -1;
  size_t n = rd[*i];
  if (*i + 1 + n > rdlen) return -1;
  sb_putc(b, '"');
  for (size_t k = 0; k < n; k++) txt_byte(b, rd[*i + 1 + k]);
  sb_putc(b, '"');
  *i += 1 + n;
  return 0;
}

/* An IPv6 address as Go prints it (RFC 5952; IPv4-mapped as
 * "::ffff:a.b.c.d", as miekg/dns prints a AAAA). */
static void put_ip6(struct sbuf *b, const unsigned char *a) {
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                           0xff, 0xff};
  if (memcmp(a, mapped, 12) == 0) {
    sb_printf(b, "::ffff:%u.%u.%u.%u", a[12], a[13], a[14], a[15]);
    return;
  }
  unsigned w[8];
  for (int i = 0; i < 8; i++) w[i] = u16(a + 2 * i);
  int best = -1, bestlen = 0;
  for (int i = 0; i < 8;) {
    if (w[i] != 0) {
      i++;
      continue;
    }
    int j = i;
    while (j < 8 && w[j] == 0) j++;
    if (j - i > bestlen && j - i >= 2) {
      best = i;
      bestlen = j - i;
    }
    i = j;
  }
  for (int i = 0; i < 8; i++) {
    if (i == best) {
      sb_puts(b, "::");
      i += bestlen - 1;
      continue;
    }
    if (i > 0 && i != best + bestlen) sb_putc(b, ':');
    sb_printf(b, "%x", w[i]);
  }
}

/* Parse the record at *off and render it into b (miekg/dns RR.String()).
 * *type gets its type and *serial an SOA's serial.  0, or -1 when
 * malformed. */
static int read_rr(const struct msg *m, size_t *off, struct sbuf *b,
                   int *type, uint32_t *serial) {
  if (read_name(m, off, b) != 0) return -1;
  if (*off + 10 > m->len) return -1;
  const unsigned char *h = m->p + *off;
  unsigned t = u16(h), cls = u16(h + 2), rdlen = u16(h + 8);
  uint32_t ttl = u32(h + 4);
  size_t rdoff = *off + 10;
  if (rdoff + rdlen > m->len) return -1;
  *off = rdoff + rdlen;
  *type = (int)t;
  const char *cn = class_name((int)cls), *tn = sonde_dns_type_name((int)t);
  sb_printf(b, "\t%lu\t", (unsigned long)ttl);
  if (cn) sb_puts(b, cn);
  else sb_printf(b, "CLASS%u", cls);
  sb_putc(b, '\t');
  if (tn) sb_puts(b, tn);
  else sb_printf(b, "TYPE%u", t);
  sb_putc(b, '\t');
  const unsigned char *rd = m->p + rdoff;
  /* a name inside the RDATA: it must end inside the RDATA */
#define RDNAME(at)                                                             \
  do {                                                                         \
    size_t o_ = rdoff + (at);                                                  \
    if (read_name(m, &o_, b) != 0 || o_ > rdoff + rdlen) return -1;            \
    consumed = o_ - rdoff;                                                     \
  } while (0)
  size_t consumed = 0, i = 0;
  switch (t) {
  case 1: /* A */
    if (rdlen != 4) return rdlen == 0 ? 0 : -1;
    sb_printf(b, "%u.%u.%u.%u", rd[0], rd[1], rd[2], rd[3]);
    return 0;
  case 28: /* AAAA */
    if (rdlen != 16) return rdlen == 0 ? 0 : -1;
    put_ip6(b, rd);
    return 0;
  case 2: case 5: case 12: case 39: /* NS CNAME PTR DNAME */
    RDNAME(0);
    return consumed == rdlen ? 0 : -1;
  case 15: /* MX */
    if (rdlen < 3) return -1;
    sb_printf(b, "%u ", u16(rd));
    RDNAME(2);
    return consumed == rdlen ? 0 : -1;
  case 33: /* SRV */
    if (rdlen < 7) return -1;
    sb_printf(b, "%u %u %u ", u16(rd), u16(rd + 2), u16(rd + 4));
    RDNAME(6);
    return consumed == rdlen ? 0 : -1;
  case 6: /* SOA */
    RDNAME(0);
    sb_putc(b, ' ');
    RDNAME(consumed);
    if (consumed + 20 != rdlen) return -1;
    *serial = u32(rd + consumed);
    sb_printf(b, " %lu %lu %lu %lu %lu", (unsigned long)u32(rd + consumed),
              (unsigned long)u32(rd + consumed + 4),
              (unsigned long)u32(rd + consumed + 8),
              (unsigned long)u32(rd + consumed + 12),
              (unsigned long)u32(rd + consumed + 16));
    return 0;
  case 16: case 99: /* TXT SPF */
    while (i < rdlen) {
      if (i) sb_putc(b, ' ');
      if (read_string(rd, rdlen, &i, b) != 0) return -1;
    }
    return 0;
  case 13: /* HINFO */
    if (read_string(rd, rdlen, &i, b) != 0) return -1;
    sb_putc(b, ' ');
    if (read_string(rd, rdlen, &i, b) != 0) return -1;
    return i == rdlen ? 0 : -1;
  case 257: { /* CAA */
    if (rdlen < 2 || 2u + rd[1] > rdlen) return -1;
    sb_printf(b, "%u ", rd[0]);
    sb_put(b, (const char *)rd + 2, rd[1]);
    sb_puts(b, " \"");
    for (size_t k = 2u + rd[1]; k < rdlen; k++) txt_byte(b, rd[k]);
    sb_putc(b, '"');
    return 0;
  }
  default: /* RFC 3597 */
    sb_printf(b, "\\# %u ", rdlen);
    for (size_t k = 0; k < rdlen; k++) sb_printf(b, "%02x", rd[k]);
    return 0;
  }
#undef RDNAME
}

/* Parse a reply into r (replied, rcode, records).  Returns NULL, or what
 * is wrong with it. */
static const char *parse_reply(const unsigned char *p, size_t len, int qtype,
                               struct sonde_dns_reply *r) {
  struct msg m = {p, len};
  if (len < 12) return "shorter than a header";
  unsigned counts[4] = {u16(p + 4), u16(p + 6), u16(p + 8), u16(p + 10)};
  size_t off = 12;
  for (unsigned q = 0; q < counts[0]; q++) {
    struct sbuf skip = {0};
    int bad = read_name(&m, &off, &skip);
    free(skip.p);
    if (bad || off + 4 > len) return "bad question section";
    off += 4;
  }
  for (int s = 0; s < SONDE_DNS_SECTIONS; s++) {
    unsigned want = counts[s + 1];
    if (want == 0) continue;
    r->rrs[s] = calloc(want, sizeof(char *));
    if (!r->rrs[s]) return "out of memory";
    for (unsigned k = 0; k < want && k < RR_MAX; k++) {
      /* a message that ends at a record's boundary is taken as it is
       * (miekg/dns: a truncated reply keeps the records it holds) */
      if (off == len) return NULL;
      struct sbuf b = {0};
      int type = 0;
      uint32_t serial = 0;
      if (read_rr(&m, &off, &b, &type, &serial) != 0) {
        free(b.p);
        return s == SONDE_DNS_ANSWER      ? "bad answer record"
               : s == SONDE_DNS_AUTHORITY ? "bad authority record"
                                          : "bad additional record";
      }
      if (b.oom) {
        free(b.p);
        return "out of memory";
      }
      r->rrs[s][r->count[s]++] = b.p;
      if (s == SONDE_DNS_ANSWER && type == 6 && qtype == 6) {
        r->has_serial = 1;
        r->serial = serial;
      }
    }
  }
  return NULL;
}

/* ---- the operation ------------------------------------------------------ */

struct sock_slot {
  int fd;                 /* -1: free */
  short what;
  struct event ev;
};

enum outcome {
  O_NONE,
  O_ANSWER,               /* ares gave a reply: abuf */
  O_ARES,                 /* ares gave an error: ares_status */
  O_DEADLINE,             /* the probe's deadline */
  O_WATCH,                /* a socket could not be watched */
  O_SETUP                 /* the query could not be set up: reason, msg */
};

struct dns_op {
  struct sonde_op op;
  ares_channel ch;
  int have_ch;
  int closing;            /* teardown in progress: ares callbacks ignored */
  int starting;           /* inside sonde_dns_start */
  int finished;
  int tcp_connected;      /* the TCP socket was seen connected */
  struct event ares_timer, deadline;
  int timers_set;
  struct sock_slot socks[SOCK_SLOTS];
  enum outcome outcome;
  int ares_status;
  unsigned char *abuf;
  size_t alen;
  sonde_reason setup_reason;
  char setup_msg[256];
  double sent_at;
  /* the options kept */
  int qtype, transport, family;
  uint32_t valid_rcodes;
  char addr[64];          /* "ip:port" / "[ip]:port" */
  /* the regexps: per section and rule, `n` of them from `first` */
  size_t first[SONDE_DNS_SECTIONS][SONDE_DNS_RULES];
  size_t n[SONDE_DNS_SECTIONS][SONDE_DNS_RULES];
  regex_t *rx;
  char **rx_src;
  size_t nrx, nrx_ok;
};

static void teardown(struct dns_op *t) {
  if (t->have_ch) {
    t->closing = 1;
    ares_destroy(t->ch);  /* closes its sockets (sock_state_cb: 0, 0) */
    t->have_ch = 0;
  }
  for (int i = 0; i < SOCK_SLOTS; i++) {
    if (t->socks[i].fd >= 0) {
      event_del(&t->socks[i].ev);
      t->socks[i].fd = -1;
    }
  }
  if (t->timers_set) {
    event_del(&t->ares_timer);
    event_del(&t->deadline);
  }
}

static void dns_release(struct sonde_op *op, int cancelled) {
  struct dns_op *t = (struct dns_op *)op;
  (void)cancelled;
  teardown(t);
  free(t->abuf);
  t->abuf = NULL;
  for (size_t i = 0; i < t->nrx_ok; i++) regfree(&t->rx[i]);
  for (size_t i = 0; i < t->nrx; i++) free(t->rx_src[i]);
  free(t->rx);
  free(t->rx_src);
  t->rx = NULL;
  t->rx_src = NULL;
  t->nrx = t->nrx_ok = 0;
}

static const struct sonde_op_vtable dns_vt = {"dns", dns_release};

/* "name" of a rule as blackbox_exporter's configuration spells it. */
static const char *const RULE_NAMES[] = {
    "fail_if_matches_regexp", "fail_if_all_match_regexp",
    "fail_if_not_matches_regexp", "fail_if_none_matches_regexp"};
static const char *const SECTION_NAMES[] = {"answer", "authority",
                                            "additional"};

static void quote(struct sbuf *b, const char *s) {
  sb_putc(b, '"');
  size_t n = strlen(s);
  for (size_t i = 0; i < n && i < 200; i++) txt_byte(b, (unsigned char)s[i]);
  if (n > 200) sb_puts(b, "...");
  sb_putc(b, '"');
}

static int rx_match(struct dns_op *t, size_t i, const char *s) {
  return regexec(&t->rx[i], s, 0, NULL, 0) == 0;
}

/* blackbox_exporter's validRRs for section s: 0 when it passes, else -1
 * with the reason in b. */
static int valid_rrs(struct dns_op *t, const struct sonde_dns_reply *r, int s,
                     struct sbuf *b) {
  size_t n = r->count[s];
  char **rrs = r->rrs[s];
  const char *sec = SECTION_NAMES[s];
  for (int rule = SONDE_DNS_FAIL_IF_NOT_MATCHES;
       rule <= SONDE_DNS_FAIL_IF_NONE_MATCHES; rule++) {
    if (n == 0 && t->n[s][rule] > 0) {
      sb_printf(b, "%s records: %s specified but no records returned", sec,
                RULE_NAMES[rule]);
      return -1;
    }
  }
  int all = 1, any = 0;
  for (size_t k = 0; k < n; k++) {
    const char *rr = rrs[k];
    size_t f = t->first[s][SONDE_DNS_FAIL_IF_MATCHES];
    for (size_t i = f; i < f + t->n[s][SONDE_DNS_FAIL_IF_MATCHES]; i++) {
      if (rx_match(t, i, rr)) {
        sb_printf(b, "%s records: a record matched fail_if_matches_regexp ",
                  sec);
        quote(b, t->rx_src[i]);
        sb_puts(b, ": ");
        quote(b, rr);
        return -1;
      }
    }
    f = t->first[s][SONDE_DNS_FAIL_IF_ALL_MATCH];
    for (size_t i = f; i < f + t->n[s][SONDE_DNS_FAIL_IF_ALL_MATCH]; i++)
      if (!rx_match(t, i, rr)) all = 0;
    f = t->first[s][SONDE_DNS_FAIL_IF_NOT_MATCHES];
    for (size_t i = f; i < f + t->n[s][SONDE_DNS_FAIL_IF_NOT_MATCHES]; i++) {
      if (!rx_match(t, i, rr)) {
        sb_printf(b, "%s records: a record did not match "
                  "fail_if_not_matches_regexp ", sec);
        quote(b, t->rx_src[i]);
        sb_puts(b, ": ");
        quote(b, rr);
        return -1;
      }
    }
    f = t->first[s][SONDE_DNS_FAIL_IF_NONE_MATCHES];
    for (size_t i = f; i < f + t->n[s][SONDE_DNS_FAIL_IF_NONE_MATCHES]; i++)
      if (rx_match(t, i, rr)) any = 1;
  }
  if (t->n[s][SONDE_DNS_FAIL_IF_ALL_MATCH] > 0 && !all) {
    /* blackbox_exporter's code (v0.23 and since): it fails when NOT every
     * record matches, whatever the option's name suggests */
    sb_printf(b, "%s records: not every record matched "
              "fail_if_all_match_regexp", sec);
    return -1;
  }
  if (t->n[s][SONDE_DNS_FAIL_IF_NONE_MATCHES] > 0 && !any) {
    sb_printf(b, "%s records: no record matched fail_if_none_matches_regexp",
              sec);
    return -1;
  }
  return 0;
}

static void set_output(struct sonde_result *r, struct sbuf *b) {
  if (b->oom || !b->p) {
    free(b->p);
    return;
  }
  size_t len = b->len;
  if (sonde_clean_text(&b->p, &len) != 0) {
    free(b->p);
    return;
  }
  free(r->output);
  r->output = b->p;
  r->output_len = len;
  b->p = NULL;
}

static void verdict(struct dns_op *t) {
  struct sonde_result *r = &t->op.res;
  struct sbuf b = {0};
  const char *tr = t->transport == SONDE_DNS_TCP ? "tcp" : "udp";
  snprintf(r->remote_addr, sizeof r->remote_addr, "%s", t->addr);
  r->ip_protocol = t->family == AF_INET6 ? 6 : t->family == AF_INET ? 4 : 0;
  r->status = SONDE_FAILURE;
  if (t->outcome == O_SETUP) {
    r->reason = t->setup_reason;
    if (r->reason == SONDE_R_RESOURCE) r->status = SONDE_UNKNOWN;
    sonde_result_set_error(r, "%s", t->setup_msg);
    sb_puts(&b, t->setup_msg);
    set_output(r, &b);
    return;
  }
  struct sonde_dns_reply *rep = calloc(1, sizeof *rep);
  if (!rep) {
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    sonde_result_set_error(r, "out of memory");
    return;
  }
  r->dns = rep;
  rep->lookup_time = sonde_now() - t->sent_at;
  if (t->outcome == O_DEADLINE ||
      (t->outcome == O_ARES && t->ares_status == ARES_ETIMEOUT)) {
    r->reason = SONDE_R_TIMEOUT;
    r->code = ETIMEDOUT;
    sonde_result_set_error(r, "i/o timeout");
    sb_printf(&b, "query to %s over %s: i/o timeout", t->addr, tr);
  } else if (t->outcome == O_WATCH) {
    r->status = SONDE_UNKNOWN;
    r->reason = SONDE_R_RESOURCE;
    sonde_result_set_error(r, "cannot watch the query's socket");
    sb_printf(&b, "query to %s over %s: cannot watch the socket", t->addr, tr);
  } else if (t->outcome == O_ARES) {
    int st = t->ares_status;
    int fds = st == ARES_ECONNREFUSED ? sonde_out_of_descriptors() : 0;
    if (fds || st == ARES_ENOMEM) {
      r->status = SONDE_UNKNOWN;
      r->reason = SONDE_R_RESOURCE;
      r->code = fds ? fds : ENOMEM;
      sonde_result_set_error(r, "%s", fds ? strerror(fds) : "out of memory");
    } else if (st == ARES_ECONNREFUSED && t->tcp_connected) {
      /* c-ares says "refused" for a TCP connection the server closed
       * before a whole reply too: that one had been accepted */
      r->reason = SONDE_R_PROTOCOL;
      sonde_result_set_error(r, "connection closed before a whole reply");
    } else if (st == ARES_ECONNREFUSED) {
      r->reason = SONDE_R_CONNECT_REFUSED;
      r->code = ECONNREFUSED;
      sonde_result_set_error(r, "connection refused");
    } else if (st == ARES_EBADRESP) {
      r->reason = SONDE_R_PROTOCOL;
      sonde_result_set_error(r, "malformed reply: %s", ares_strerror(st));
    } else if (st == ARES_EBADNAME || st == ARES_EBADQUERY) {
      r->reason = SONDE_R_CONFIG;
      sonde_result_set_error(r, "%s", ares_strerror(st));
    } else {
      r->reason = SONDE_R_NETWORK;
      sonde_result_set_error(r, "%s", ares_strerror(st));
    }
    sb_printf(&b, "query to %s over %s: %s", t->addr, tr,
              r->error ? r->error : "error");
  } else {
    const char *bad = parse_reply(t->abuf, t->alen, t->qtype, rep);
    if (bad) {
      if (strcmp(bad, "out of memory") == 0) {
        r->status = SONDE_UNKNOWN;
        r->reason = SONDE_R_RESOURCE;
      } else {
        r->reason = SONDE_R_PROTOCOL;
      }
      /* what was parsed is not a reply: no facts (query_succeeded 0) */
      sonde_dns_reply_free(rep);
      r->dns = rep = calloc(1, sizeof *rep);
      if (rep) rep->lookup_time = sonde_now() - t->sent_at;
      sonde_result_set_error(r, "malformed reply: %s", bad);
      sb_printf(&b, "query to %s over %s: malformed reply: %s", t->addr, tr,
                bad);
      set_output(r, &b);
      return;
    }
    rep->replied = 1;
    rep->rcode = t->abuf[3] & 0x0F;
    const char *rname = sonde_dns_rcode_name(rep->rcode);
    char num[16];
    if (!rname) {
      snprintf(num, sizeof num, "%d", rep->rcode);
      rname = num;
    }
    uint32_t valid = t->valid_rcodes ? t->valid_rcodes : 1u;
    if (!(valid >> rep->rcode & 1u)) {
      r->reason = SONDE_R_DNS;
      sb_printf(&b, "rcode %s is not one of the valid rcodes (", rname);
      int first = 1;
      for (int c = 0; c < 32; c++) {
        if (!(valid >> c & 1u)) continue;
        const char *cn = sonde_dns_rcode_name(c);
        if (!first) sb_puts(&b, ", ");
        if (cn) sb_puts(&b, cn);
        else sb_printf(&b, "%d", c);
        first = 0;
      }
      sb_putc(&b, ')');
      sonde_result_set_error(r, "%s", b.p ? b.p : "rcode");
      set_output(r, &b);
      return;
    }
    for (int s = 0; s < SONDE_DNS_SECTIONS; s++) {
      if (valid_rrs(t, rep, s, &b) != 0) {
        r->reason = SONDE_R_EXPECT;
        sonde_result_set_error(r, "%s", b.p ? b.p : "validation");
        set_output(r, &b);
        return;
      }
    }
    r->status = SONDE_SUCCESS;
    r->reason = SONDE_R_OK;
    sb_printf(&b, "%s: %zu answer, %zu authority, %zu additional records",
              rname, rep->count[0], rep->count[1], rep->count[2]);
  }
  set_output(r, &b);
  if (r->error && sonde_clean_text(&r->error, NULL) != 0) {
    free(r->error);
    r->error = NULL;
  }
}

/* The outcome is known: decide, free the channel now, deliver. */
static void finish(struct dns_op *t) {
  if (t->finished) return;
  t->finished = 1;
  teardown(t);
  verdict(t);
  if (t->starting) sonde_op_complete_soon(&t->op);
  else sonde_op_complete(&t->op);
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf,
                      int alen) {
  struct dns_op *t = arg;
  (void)timeouts;
  if (t->closing || t->outcome != O_NONE) return;
  if (status == ARES_SUCCESS && abuf && alen > 0) {
    t->abuf = malloc((size_t)alen);
    if (!t->abuf) {
      t->outcome = O_ARES;
      t->ares_status = ARES_ENOMEM;
      return;
    }
    memcpy(t->abuf, abuf, (size_t)alen);
    t->alen = (size_t)alen;
    t->outcome = O_ANSWER;
  } else {
    t->outcome = O_ARES;
    t->ares_status = status == ARES_SUCCESS ? ARES_EBADRESP : status;
  }
}

static void on_ares_timer(evutil_socket_t fd, short what, void *arg);

/* After c-ares ran: end when it gave an outcome, else re-arm its timer. */
static void after_ares(struct dns_op *t) {
  if (t->outcome != O_NONE) {
    finish(t);
    return;
  }
  struct timeval tv, *tvp = ares_timeout(t->ch, NULL, &tv);
  event_del(&t->ares_timer);
  if (tvp) {
    double s = (double)tvp->tv_sec + (double)tvp->tv_usec / 1e6;
    sonde_loop_add_timer(t->op.loop, &t->ares_timer, s);
  }
}

static void on_ares_timer(evutil_socket_t fd, short what, void *arg) {
  struct dns_op *t = arg;
  (void)fd;
  (void)what;
  ares_process_fd(t->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  after_ares(t);
}

static void on_sock(evutil_socket_t fd, short what, void *arg) {
  struct dns_op *t = arg;
  if (t->transport == SONDE_DNS_TCP && !t->tcp_connected) {
    /* (before c-ares may close it) a peer: the connection was made */
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &plen) == 0)
      t->tcp_connected = 1;
  }
  ares_process_fd(t->ch, (what & EV_READ) ? fd : ARES_SOCKET_BAD,
                  (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
  after_ares(t);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
  struct dns_op *t = arg;
  (void)fd;
  (void)what;
  if (t->outcome == O_NONE) t->outcome = O_DEADLINE;
  finish(t);
}

/* c-ares's socket-state callback: watch sock for what it wants, or no
 * longer (0, 0: it is being closed). */
static void on_sock_state(void *arg, ares_socket_t sock, int readable,
                          int writable) {
  struct dns_op *t = arg;
  struct sock_slot *slot = NULL, *free_slot = NULL;
  for (int i = 0; i < SOCK_SLOTS; i++) {
    if (t->socks[i].fd == sock) slot = &t->socks[i];
    else if (t->socks[i].fd < 0 && !free_slot) free_slot = &t->socks[i];
  }
  if (slot) {
    event_del(&slot->ev);
    slot->fd = -1;
  }
  if (t->closing || (!readable && !writable)) return;
  slot = slot ? slot : free_slot;
  short what = (short)((readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
  if (!slot ||
      event_assign(&slot->ev, t->op.loop->base, sock, what | EV_PERSIST,
                   on_sock, t) != 0 ||
      event_add(&slot->ev, NULL) != 0) {
    if (t->outcome == O_NONE) t->outcome = O_WATCH;
    return;
  }
  slot->fd = sock;
  slot->what = what;
}

static void setup_failed(struct dns_op *t, sonde_reason reason,
                         const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void setup_failed(struct dns_op *t, sonde_reason reason,
                         const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->setup_msg, sizeof t->setup_msg, fmt, ap);
  va_end(ap);
  t->setup_reason = reason;
  t->outcome = O_SETUP;
  finish(t);
}

/* Copy and compile the validators' regexps. */
static int compile_all(struct dns_op *t, const struct sonde_dns_opts *o,
                       char *err, size_t n) {
  size_t total = 0;
  for (int s = 0; s < SONDE_DNS_SECTIONS; s++)
    for (int k = 0; k < SONDE_DNS_RULES; k++) total += o->validate[s].n[k];
  if (total == 0) return 0;
  t->rx = calloc(total, sizeof *t->rx);
  t->rx_src = calloc(total, sizeof *t->rx_src);
  if (!t->rx || !t->rx_src) {
    snprintf(err, n, "out of memory");
    return -2;
  }
  size_t i = 0;
  for (int s = 0; s < SONDE_DNS_SECTIONS; s++) {
    for (int k = 0; k < SONDE_DNS_RULES; k++) {
      t->first[s][k] = i;
      t->n[s][k] = o->validate[s].n[k];
      for (size_t j = 0; j < o->validate[s].n[k]; j++, i++) {
        const char *re = o->validate[s].re[k][j];
        const char *shown = o->validate[s].shown[k]
                                ? o->validate[s].shown[k][j] : re;
        t->rx_src[i] = strdup(shown);
        t->nrx = i + 1;
        if (!t->rx_src[i]) {
          snprintf(err, n, "out of memory");
          return -2;
        }
        char why[200];
        if (compile(&t->rx[i], re, why, sizeof why) != 0) {
          snprintf(err, n, "validate_%s_rrs.%s: regexp \"%.200s\": %s",
                   SECTION_NAMES[s], RULE_NAMES[k], shown, why);
          return -1;
        }
        t->nrx_ok = i + 1;
      }
    }
  }
  return 0;
}

uint64_t sonde_dns_start(struct sonde_loop *loop,
                         const struct sonde_dns_opts *o, sonde_result_cb cb,
                         void *arg) {
  static int lib_ready;
  struct dns_op *t = calloc(1, sizeof *t);
  if (!t) return 0;
  t->op.vt = &dns_vt;
  for (int i = 0; i < SOCK_SLOTS; i++) t->socks[i].fd = -1;
  t->qtype = o->qtype;
  t->transport = o->transport;
  t->valid_rcodes = o->valid_rcodes;
  uint64_t id = sonde_op_start(loop, &t->op, cb, arg);
  t->starting = 1;
  t->sent_at = t->op.start;
  evtimer_assign(&t->ares_timer, loop->base, on_ares_timer, t);
  evtimer_assign(&t->deadline, loop->base, on_deadline, t);
  t->timers_set = 1;

  struct ares_addr_port_node server;
  memset(&server, 0, sizeof server);
  const char *host = o->server ? o->server : "";
  if (inet_pton(AF_INET, host, &server.addr.addr4) == 1) {
    server.family = t->family = AF_INET;
    snprintf(t->addr, sizeof t->addr, "%s:%ld", host, o->port);
  } else if (inet_pton(AF_INET6, host, &server.addr.addr6) == 1) {
    server.family = t->family = AF_INET6;
    snprintf(t->addr, sizeof t->addr, "[%s]:%ld", host, o->port);
  } else {
    setup_failed(t, SONDE_R_CONFIG, "server: not an IP address: \"%.100s\"",
                 host);
    goto out;
  }
  if (o->port < 1 || o->port > 65535) {
    setup_failed(t, SONDE_R_CONFIG, "port: must be 1..65535, got %ld",
                 o->port);
    goto out;
  }
  server.udp_port = server.tcp_port = (int)o->port;
  char err[1024];
  int rc = compile_all(t, o, err, sizeof err);
  if (rc != 0) {
    setup_failed(t, rc == -2 ? SONDE_R_RESOURCE : SONDE_R_CONFIG, "%s", err);
    goto out;
  }
  if (!lib_ready) {
    if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS) {
      setup_failed(t, SONDE_R_RESOURCE, "c-ares: cannot initialise");
      goto out;
    }
    lib_ready = 1;
  }

  /* everything set by options: c-ares then reads no configuration file */
  struct ares_options ao;
  memset(&ao, 0, sizeof ao);
  double secs = o->timeout > SONDE_MAX_SECONDS ? SONDE_MAX_SECONDS : o->timeout;
  if (!(secs > 0)) secs = 0;
  double ms = ceil(secs * 1000) + 1000;   /* past the deadline: ours decides */
  ao.timeout = ms > 2e9 ? 2000000000 : (int)ms;
  ao.tries = 1;
  ao.ndots = 1;
  ao.flags = ARES_FLAG_NOCHECKRESP | ARES_FLAG_IGNTC | ARES_FLAG_NOSEARCH |
             (o->transport == SONDE_DNS_TCP ? ARES_FLAG_USEVC : 0);
  ao.nservers = 0;
  ao.ndomains = 0;
  ao.nsort = 0;
  ao.lookups = (char *)"b";
  ao.sock_state_cb = on_sock_state;
  ao.sock_state_cb_data = t;
  int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
             ARES_OPT_NDOTS | ARES_OPT_SERVERS | ARES_OPT_DOMAINS |
             ARES_OPT_LOOKUPS | ARES_OPT_SORTLIST | ARES_OPT_SOCK_STATE_CB;
  rc = ares_init_options(&t->ch, &ao, mask);
  if (rc != ARES_SUCCESS) {
    setup_failed(t, SONDE_R_RESOURCE, "c-ares: %s", ares_strerror(rc));
    goto out;
  }
  t->have_ch = 1;
  rc = ares_set_servers_ports(t->ch, &server);
  if (rc != ARES_SUCCESS) {
    setup_failed(t, rc == ARES_ENOMEM ? SONDE_R_RESOURCE : SONDE_R_CONFIG,
                 "c-ares: server %s: %s", t->addr, ares_strerror(rc));
    goto out;
  }
  unsigned char *q = NULL;
  int qlen = 0;
  rc = ares_create_query(o->name ? o->name : "", o->qclass, o->qtype, 0,
                         o->recursion_desired ? 1 : 0, &q, &qlen, 0);
  if (rc != ARES_SUCCESS) {
    setup_failed(t, rc == ARES_ENOMEM ? SONDE_R_RESOURCE : SONDE_R_CONFIG,
                 "name \"%.300s\": %s", o->name ? o->name : "",
                 ares_strerror(rc));
    goto out;
  }
  if (sonde_loop_add_timer(loop, &t->deadline,
                           t->op.start + secs - sonde_now()) != 0) {
    ares_free_string(q);
    setup_failed(t, SONDE_R_RESOURCE, "cannot arm the deadline");
    goto out;
  }
  t->sent_at = sonde_now();
  ares_send(t->ch, q, qlen, on_answer, t);
  ares_free_string(q);
  after_ares(t);
out:
  t->starting = 0;
  return id;
}
