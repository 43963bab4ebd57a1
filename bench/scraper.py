#!/usr/bin/python3
"""bench/scraper.py: the external scraper of the benchmark (bench/bench.lua).

  /usr/bin/python3 bench/scraper.py --port P --phase FILE --ack FILE \
      --save FILE [--interval 1] [--timeout 30] [--max-seconds 600]

Polls GET /metrics (with "Accept-Encoding: gzip", as Prometheus sends it)
and GET /status (the same header) on 127.0.0.1:P, each path from its own
thread on its own schedule: one scrape per INTERVAL seconds, never two of
one path at once; when a scrape ends after its successor was due, the
successor starts at once and is counted as a late start (no catching up:
the schedule restarts from there).  A new connection per scrape, a socket
timeout of TIMEOUT seconds, and a scrape longer than TIMEOUT in all is a
failure too.

It scrapes only while FILE (--phase, written by bench/declared.lua under
the host) reads "scrape W" (W: the host's window); "idle" or "pause W":
no new scrape starts; once none is in flight after "pause W", --ack is
written with "pause W" (the host then ends its window: every scrape
started in a window ends in it); "done": the threads finish, one more GET
/metrics without Accept-Encoding is made (the uncompressed exposition,
saved to --save for promtool, its line marked "identity"), then --ack is
written with "done" and the scraper exits.

Prints one JSON line per scrape on stdout (flat, no space after ':'):
  path, status (HTTP status, null when none), wire (body bytes as sent:
  after chunked decoding, before gzip decoding), decoded (body bytes after
  gzip decoding; = wire when not compressed), encoding ("gzip" or
  "identity": the Content-Encoding), seconds (from before the connect to
  the last byte read), late (the start was late), window (W), identity
  (the final uncompressed fetch), error (null, or a short text without
  quotes nor commas: no answer, a timeout, a status other than 200, a
  body shorter than its Content-Length, an incomplete chunked body, bad
  gzip, a /status that is not JSON, a /metrics not ending with a
  newline).  Loopback only.
"""
import argparse
import gzip
import http.client
import json
import os
import re
import sys
import threading
import time

out_lock = threading.Lock()
# phase reads that start a scrape and the count of scrapes in flight:
# under one lock, so that "none in flight during pause W" is final
state_lock = threading.Lock()
inflight = [0]


def emit(rec):
    line = json.dumps(rec, separators=(",", ":"))
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def clean(text):
    return re.sub(r"[^A-Za-z0-9 _.:/()-]", " ", str(text))[:120]


def phase(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "idle"


def scrape(port, path, timeout, gzip_ok, save=None):
    """One GET: (status, wire, decoded, encoding, seconds, error)."""
    t0 = time.monotonic()
    status, wire, decoded, encoding, err = None, 0, 0, "identity", None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Accept-Encoding": "gzip"} if gzip_ok else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        status = resp.status
        encoding = (resp.getheader("Content-Encoding") or "identity").lower()
        parts = []
        while True:
            chunk = resp.read(1 << 16)
            if not chunk:
                break
            parts.append(chunk)
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("longer than %g s" % timeout)
        body = b"".join(parts)
        wire = len(body)
        # (http.client's read(n) returns what came before the peer closed,
        # without a word, when that is less than the Content-Length)
        length = resp.getheader("Content-Length")
        chunked = "chunked" in (resp.getheader("Transfer-Encoding") or "")
        if length is not None and not chunked and int(length) != wire:
            raise ValueError("truncated: %d of %s bytes" % (wire, length))
        if encoding == "gzip":
            body = gzip.decompress(body)
        decoded = len(body)
        if status != 200:
            err = "status %d" % status
        elif path.startswith("/status"):
            json.loads(body)
        elif not body.endswith(b"\n"):
            raise ValueError("the exposition does not end with a newline")
        if save and err is None:
            with open(save, "wb") as f:
                f.write(body)
    except Exception as e:  # every failure is a figure, not a crash
        err = clean("%s: %s" % (type(e).__name__, e))
    finally:
        conn.close()
    return status, wire, decoded, encoding, time.monotonic() - t0, err


def write_ack(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text + "\n")
    os.replace(path + ".tmp", path)


def poller(args, path, stop):
    due = None
    while not stop.is_set():
        now = time.monotonic()
        if due is not None and now < due:
            time.sleep(min(due - now, 0.02))
            continue
        with state_lock:
            p = phase(args.phase)
            if p.startswith("scrape"):
                inflight[0] += 1
        if p == "done":
            return
        if not p.startswith("scrape"):
            due = None   # the schedule restarts at the next window
            time.sleep(0.02)
            continue
        late = due is not None and now > due + 0.05
        window = int(p.split()[1]) if len(p.split()) > 1 else 0
        start = time.monotonic()
        try:
            status, wire, decoded, enc, secs, err = scrape(
                args.port, path, args.timeout, True)
        finally:
            with state_lock:
                inflight[0] -= 1
        emit({"path": path, "status": status, "wire": wire,
              "decoded": decoded, "encoding": enc, "seconds": round(secs, 6),
              "late": late, "window": window, "identity": False,
              "error": err})
        # the next one is due a period after this one's start; when this
        # one ended later than that, it starts at once and counts as late
        due = start + args.interval


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--phase", required=True)
    ap.add_argument("--ack", required=True)
    ap.add_argument("--save", required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    args = ap.parse_args()
    stop = threading.Event()
    threads = [threading.Thread(target=poller, args=(args, p, stop),
                                daemon=True) for p in ("/metrics", "/status")]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    acked = None
    while True:
        with state_lock:
            p = phase(args.phase)
            if p.startswith("pause") and inflight[0] == 0 and p != acked:
                write_ack(args.ack, p)
                acked = p
        if p == "done":
            break
        if time.monotonic() - t0 > args.max_seconds:
            stop.set()
            break
        time.sleep(0.02)
    for t in threads:
        t.join(args.timeout + 5)
    if not stop.is_set():
        status, wire, decoded, enc, secs, err = scrape(
            args.port, "/metrics", args.timeout, False, args.save)
        emit({"path": "/metrics", "status": status, "wire": wire,
              "decoded": decoded, "encoding": enc, "seconds": round(secs, 6),
              "late": False, "window": 0, "identity": True, "error": err})
    write_ack(args.ack, "done")


if __name__ == "__main__":
    main()
