/*
 * bench/raw.c - the raw C baseline of the benchmark (bench/bench.lua), and
 * its driver of blackbox_exporter.
 *
 *   raw tcp   --port P              [schedule] [window]
 *   raw http  --url U               [schedule] [window]
 *   raw exec  [--command /bin/true] [schedule] [window]
 *   raw drive --url U --pid PID [--expect TEXT] [schedule] [window]
 *   raw port                        print a free loopback TCP port
 *
 *   schedule: --n N (slots, 1000) --period P (seconds, 1) --timeout T (1)
 *   window:   --warmup W (seconds, 2) --seconds S (5)
 *
 * What one run does, per mode (and nothing more: the least a C program on
 * libevent must do to get the same answer):
 *   tcp   socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC),
 *         connect() to 127.0.0.1:P, wait writable on libevent (timeout T),
 *         getsockopt(SO_ERROR), close().  Success: SO_ERROR 0.
 *   http  libcurl multi driven by libevent (socket and timer callbacks, as
 *         libcurl's hiperfifo example); one easy handle per slot, set up
 *         once and reused for every run of the slot, with
 *         CURLOPT_FRESH_CONNECT and CURLOPT_FORBID_REUSE (a new connection
 *         per run, as a probe), CURLOPT_TIMEOUT_MS T, CURLOPT_NOSIGNAL,
 *         no proxy; GET U, body discarded.  Success: CURLE_OK and 2xx.
 *   exec  pipe2(O_CLOEXEC), its read end non-blocking; posix_spawn() of
 *         the command (argv { command }, this process's environ) with the
 *         pipe's write end dup2'ed onto stdout and stderr (stdin
 *         inherited); pidfd_open() of the child; the pipe read (4 KiB at a
 *         time) on libevent until EOF, the pidfd watched on libevent, the
 *         child reaped with waitpid(WNOHANG) once it is readable.  Done
 *         when both happened.  Success: exit status 0.  No deadline.
 *   drive the same libcurl multi as http, but with keep-alive connections
 *         (the driver's own cost stays low): GET U and count an answer as
 *         a success when its body contains TEXT (default "probe_success
 *         1").  What is measured is process PID (blackbox_exporter):
 *         utime + stime from /proc/PID/stat and VmRSS from
 *         /proc/PID/status.
 *
 * The schedule is that of declared probes (lua/sonde/ticker.lua): N slots,
 * each at a fixed rate of one run per P seconds, slot i (0-based) first
 * due i/N * P after the start; the k-th tick of a slot is due at its first
 * time + k * P whatever the lateness of the ones before; a tick that comes
 * after later slots of its own passed counts those as missed; a tick whose
 * previous run is still in flight skips (counted).  Timers on one libevent
 * base with EVENT_BASE_FLAG_PRECISE_TIMER.
 *
 * After W seconds of warm-up, it measures for S seconds and prints one
 * JSON line:
 *   {"system":"raw","kind":K,"n":N,"period":P,"seconds":S,
 *    "cpu":seconds (getrusage(RUSAGE_SELF) user + system, children
 *          excluded; in drive mode the utime + stime of PID),
 *    "cpu_children": getrusage(RUSAGE_CHILDREN) user + system (the
 *          children reaped in the window: exec's commands),
 *    "runs":results in the window,"ok":successes among them,
 *    "skipped":ticks skipped (run in flight),"missed":slots missed,
 *    "rss":bytes (VmRSS at the end; PID's in drive mode),
 *    "p50","p99","max": lateness of the ticks in the window in seconds
 *          (tick start minus due time; nearest rank)}
 * Loopback only.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum mode { M_TCP, M_HTTP, M_EXEC, M_DRIVE };

struct slot {
  int index;
  double first_at, next_at;
  long ticks;
  int busy;
  struct event *timer;
  /* tcp */
  int fd;
  struct event ev;         /* tcp socket / exec pipe */
  /* http, drive */
  CURL *easy;
  char *body;
  size_t body_len;
  /* exec */
  pid_t pid;
  int pidfd, eof, reaped, status;
  struct event pidev;
};

static struct {
  enum mode mode;
  const char *kind, *url, *command, *expect;
  int port, n;
  double period, timeout, warmup, seconds;
  long pid;                /* drive: the measured process */
  struct event_base *base;
  CURLM *multi;
  struct event *curl_timer;
  struct slot *slots;
  int measuring;
  long runs, ok, skipped, missed;
  double *late;
  size_t nlate, cap;
  double cpu0, children0;
} g;

static void die(const char *msg) {
  fprintf(stderr, "raw: %s: %s\n", msg, strerror(errno));
  exit(2);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct timeval tv_of(double s) {
  if (s < 0) s = 0;
  struct timeval tv;
  tv.tv_sec = (time_t)s;
  tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
  return tv;
}

/* /proc/PID/stat utime + stime, seconds. */
static double proc_cpu(long pid) {
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  unsigned long long ut, st;
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
                   "%llu %llu", &ut, &st) != 2)
    return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double children_cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_CHILDREN, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double cpu(void) {
  return g.mode == M_DRIVE ? proc_cpu(g.pid) : self_cpu();
}

/* VmRSS of /proc/PID/status (pid 0: self), bytes. */
static long rss(long pid) {
  char path[64], line[256];
  if (pid) snprintf(path, sizeof path, "/proc/%ld/status", pid);
  else snprintf(path, sizeof path, "/proc/self/status");
  FILE *f = fopen(path, "re");
  long kb = -1;
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld", &kb) == 1) break;
  fclose(f);
  return kb * 1024;
}

/* ------------------------------------------------------------------ */
/* the end of a run                                                     */
/* ------------------------------------------------------------------ */

static void finish(struct slot *s, int ok) {
  s->busy = 0;
  if (!g.measuring) return;
  g.runs++;
  if (ok) g.ok++;
}

/* ------------------------------------------------------------------ */
/* tcp                                                                  */
/* ------------------------------------------------------------------ */

static void tcp_done(evutil_socket_t fd, short what, void *arg) {
  struct slot *s = arg;
  int err = ETIMEDOUT;
  socklen_t len = sizeof err;
  if (what & EV_WRITE) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  close(fd);
  finish(s, err == 0);
}

static void tcp_start(struct slot *s) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) { finish(s, 0); return; }
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)g.port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 &&
      errno != EINPROGRESS) {
    close(fd);
    finish(s, 0);
    return;
  }
  struct timeval tv = tv_of(g.timeout);
  event_assign(&s->ev, g.base, fd, EV_WRITE, tcp_done, s);
  event_add(&s->ev, &tv);
}

/* ------------------------------------------------------------------ */
/* http and drive: libcurl multi on libevent                            */
/* ------------------------------------------------------------------ */

static void check_multi(void) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(g.multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    struct slot *s;
    CURL *e = m->easy_handle;
    CURLcode rc = m->data.result;
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&s);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_multi_remove_handle(g.multi, e);
    int ok = rc == CURLE_OK && code >= 200 && code < 300;
    if (g.mode == M_DRIVE)
      ok = ok && s->body && memmem(s->body, s->body_len, g.expect,
                                   strlen(g.expect)) != NULL;
    s->body_len = 0;
    finish(s, ok);
  }
}

static void on_curl_event(evutil_socket_t fd, short what, void *arg) {
  (void)arg;
  int running, act = (what & EV_READ ? CURL_CSELECT_IN : 0) |
                     (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
  curl_multi_socket_action(g.multi, fd, act, &running);
  check_multi();
}

static void on_curl_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what, (void)arg;
  int running;
  curl_multi_socket_action(g.multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_multi();
}

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *up, void *sp) {
  (void)e, (void)up;
  struct event *ev = sp;
  if (what == CURL_POLL_REMOVE) {
    if (ev) event_free(ev);
    curl_multi_assign(g.multi, fd, NULL);
    return 0;
  }
  short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) |
                       ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
  if (ev) {
    event_del(ev);
    event_assign(ev, g.base, fd, kind, on_curl_event, NULL);
  } else {
    ev = event_new(g.base, fd, kind, on_curl_event, NULL);
    curl_multi_assign(g.multi, fd, ev);
  }
  event_add(ev, NULL);
  return 0;
}

static int timer_cb(CURLM *m, long ms, void *up) {
  (void)m, (void)up;
  if (ms < 0) {
    evtimer_del(g.curl_timer);
  } else {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(g.curl_timer, &tv);
  }
  return 0;
}

static size_t discard(char *p, size_t size, size_t n, void *arg) {
  (void)p, (void)arg;
  return size * n;
}

static size_t keep(char *p, size_t size, size_t n, void *arg) {
  struct slot *s = arg;
  size_t len = size * n;
  char *b = realloc(s->body, s->body_len + len);
  if (!b) return 0;
  memcpy(b + s->body_len, p, len);
  s->body = b;
  s->body_len += len;
  return len;
}

static void http_setup(struct slot *s) {
  CURL *e = s->easy = curl_easy_init();
  if (!e) die("curl_easy_init");
  curl_easy_setopt(e, CURLOPT_URL, g.url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)s);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROXY, "");
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(g.timeout * 1000));
  if (g.mode == M_DRIVE) {
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
  } else {
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
  }
}

static void http_start(struct slot *s) {
  if (curl_multi_add_handle(g.multi, s->easy) != CURLM_OK) finish(s, 0);
}

/* ------------------------------------------------------------------ */
/* exec                                                                 */
/* ------------------------------------------------------------------ */

static void exec_check(struct slot *s) {
  if (!s->eof || !s->reaped) return;
  close(s->fd);
  close(s->pidfd);
  finish(s, WIFEXITED(s->status) && WEXITSTATUS(s->status) == 0);
}

static void on_pipe(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  struct slot *s = arg;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;   /* EV_PERSIST: more later */
    break;                                  /* EOF or error */
  }
  event_del(&s->ev);
  s->eof = 1;
  exec_check(s);
}

static void on_pidfd(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  struct slot *s = arg;
  if (waitpid(s->pid, &s->status, WNOHANG) != s->pid) return;
  event_del(&s->pidev);
  s->reaped = 1;
  exec_check(s);
}

static void exec_start(struct slot *s) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) { finish(s, 0); return; }
  fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  posix_spawn_file_actions_adddup2(&fa, p[1], 2);
  char *argv[] = {(char *)g.command, NULL};
  int err = posix_spawn(&s->pid, g.command, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(p[1]);
  if (err != 0) { close(p[0]); finish(s, 0); return; }
  s->fd = p[0];
  s->pidfd = (int)syscall(SYS_pidfd_open, s->pid, 0);
  if (s->pidfd < 0) die("pidfd_open");
  s->eof = s->reaped = 0;
  event_assign(&s->ev, g.base, s->fd, EV_READ | EV_PERSIST, on_pipe, s);
  event_assign(&s->pidev, g.base, s->pidfd, EV_READ | EV_PERSIST, on_pidfd,
               s);
  event_add(&s->ev, NULL);
  event_add(&s->pidev, NULL);
}

/* ------------------------------------------------------------------ */
/* the schedule                                                         */
/* ------------------------------------------------------------------ */

static void arm(struct slot *s, double at) {
  s->next_at = at;
  struct timeval tv = tv_of(at - now());
  evtimer_add(s->timer, &tv);
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  struct slot *s = arg;
  double t = now(), due = s->next_at;
  long k = (long)((t - s->first_at) / g.period) + 1;
  if (k <= s->ticks) k = s->ticks + 1;
  if (g.measuring) {
    g.missed += k - s->ticks - 1;
    if (g.nlate == g.cap) {
      g.cap = g.cap ? g.cap * 2 : 4096;
      g.late = realloc(g.late, g.cap * sizeof *g.late);
      if (!g.late) die("realloc");
    }
    g.late[g.nlate++] = t - due;
  }
  s->ticks = k;
  arm(s, s->first_at + (double)k * g.period);
  if (s->busy) {
    if (g.measuring) g.skipped++;
    return;
  }
  s->busy = 1;
  switch (g.mode) {
  case M_TCP: tcp_start(s); break;
  case M_EXEC: exec_start(s); break;
  default: http_start(s); break;
  }
}

static void on_measure(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what, (void)arg;
  g.measuring = 1;
  g.runs = g.ok = g.skipped = g.missed = 0;
  g.nlate = 0;
  g.cpu0 = cpu();
  g.children0 = children_cpu();
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double rank(double q) {
  if (!g.nlate) return 0;
  size_t i = (size_t)(q * (double)g.nlate + 0.999999);
  if (i < 1) i = 1;
  if (i > g.nlate) i = g.nlate;
  return g.late[i - 1];
}

static void on_end(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what, (void)arg;
  double used = cpu() - g.cpu0, children = children_cpu() - g.children0;
  qsort(g.late, g.nlate, sizeof *g.late, cmp);
  printf("{\"system\":\"%s\",\"kind\":\"%s\",\"n\":%d,\"period\":%g,"
         "\"seconds\":%g,\"cpu\":%.6f,\"cpu_children\":%.6f,"
         "\"runs\":%ld,\"ok\":%ld,"
         "\"skipped\":%ld,\"missed\":%ld,\"rss\":%ld,\"p50\":%.6f,"
         "\"p99\":%.6f,\"max\":%.6f}\n",
         g.mode == M_DRIVE ? "blackbox" : "raw", g.kind, g.n, g.period,
         g.seconds, used, children, g.runs, g.ok, g.skipped, g.missed,
         rss(g.mode == M_DRIVE ? g.pid : 0), rank(0.5), rank(0.99),
         g.nlate ? g.late[g.nlate - 1] : 0.0);
  fflush(stdout);
  /* what is still in flight is dropped with the process */
  _exit(0);
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa;
  socklen_t len = sizeof sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
    die("free port");
  printf("%d\n", ntohs(sa.sin_port));
  close(fd);
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: raw tcp|http|exec|drive|port [--port P] [--url U] "
          "[--command PATH] [--pid PID] [--expect TEXT] [--n N] "
          "[--period S] [--timeout S] [--warmup S] [--seconds S]\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  g.kind = argv[1];
  if (strcmp(argv[1], "tcp") == 0) g.mode = M_TCP;
  else if (strcmp(argv[1], "http") == 0) g.mode = M_HTTP;
  else if (strcmp(argv[1], "exec") == 0) g.mode = M_EXEC;
  else if (strcmp(argv[1], "drive") == 0) g.mode = M_DRIVE;
  else if (strcmp(argv[1], "port") == 0) return free_port();
  else usage();
  g.n = 1000;
  g.period = 1;
  g.timeout = 1;
  g.warmup = 2;
  g.seconds = 5;
  g.command = "/bin/true";
  g.expect = "probe_success 1";
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) usage();
    i++;
    if (strcmp(a, "--port") == 0) g.port = atoi(v);
    else if (strcmp(a, "--url") == 0) g.url = v;
    else if (strcmp(a, "--command") == 0) g.command = v;
    else if (strcmp(a, "--expect") == 0) g.expect = v;
    else if (strcmp(a, "--kind") == 0) g.kind = v;
    else if (strcmp(a, "--pid") == 0) g.pid = atol(v);
    else if (strcmp(a, "--n") == 0) g.n = atoi(v);
    else if (strcmp(a, "--period") == 0) g.period = atof(v);
    else if (strcmp(a, "--timeout") == 0) g.timeout = atof(v);
    else if (strcmp(a, "--warmup") == 0) g.warmup = atof(v);
    else if (strcmp(a, "--seconds") == 0) g.seconds = atof(v);
    else usage();
  }
  if (g.n < 1 || g.period <= 0 || g.seconds <= 0 ||
      (g.mode == M_TCP && (g.port < 1 || g.port > 65535)) ||
      ((g.mode == M_HTTP || g.mode == M_DRIVE) && !g.url) ||
      (g.mode == M_DRIVE && g.pid <= 0))
    usage();

  struct event_config *cfg = event_config_new();
  event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
  g.base = event_base_new_with_config(cfg);
  event_config_free(cfg);
  if (!g.base) die("event_base_new");
  if (g.mode == M_HTTP || g.mode == M_DRIVE) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    g.multi = curl_multi_init();
    g.curl_timer = evtimer_new(g.base, on_curl_timer, NULL);
    curl_multi_setopt(g.multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(g.multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  }
  g.slots = calloc((size_t)g.n, sizeof *g.slots);
  if (!g.slots) die("calloc");
  double t0 = now();
  for (int i = 0; i < g.n; i++) {
    struct slot *s = &g.slots[i];
    s->index = i;
    s->fd = s->pidfd = -1;
    s->first_at = t0 + (double)i / g.n * g.period;
    s->timer = evtimer_new(g.base, on_tick, s);
    if (g.mode == M_HTTP || g.mode == M_DRIVE) http_setup(s);
    arm(s, s->first_at);
  }
  struct timeval w = tv_of(g.warmup), e = tv_of(g.warmup + g.seconds);
  event_base_once(g.base, -1, EV_TIMEOUT, on_measure, NULL, &w);
  event_base_once(g.base, -1, EV_TIMEOUT, on_end, NULL, &e);
  event_base_dispatch(g.base);
  return 1;
}
