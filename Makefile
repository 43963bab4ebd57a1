# sonde - Lua-scriptable probe engine.
#
#   make              build build/lib/sonde/core.so and build/bin/sonde
#   make check        build, then run the busted suite under Lua 5.4
#   make check SANITIZE=1   the same with AddressSanitizer + UBSan
#   make bench        the benchmark, a few minutes (BENCH_QUICK=1: shorter)
#   make bench-memory no RSS growth at 1,000 runs/s for BENCH_MEMORY s (600)
#   make bench-concurrency  N probes one by one, then at once on the loop
#   make soak         the hostile soak, 60 s (SOAK_SECONDS=600 for the long one)
#   make demo         run the liveness-exec example (about 40 s)
#   make demo-probes  run ten probes at once against a local server
#   make env          print LUA_PATH/LUA_CPATH exports for plain lua5.4
#   make install PREFIX=/usr/local
#
# Variables follow LuaRocks' names so the rockspec can pass its own:
# LUA_INCDIR, CFLAGS, LIBFLAG, LUADIR, LIBDIR, BINDIR, PREFIX.

VERSION     := 0.1.0
PKG_CONFIG  ?= pkg-config
LUA_PC      ?= lua5.4
LUA         ?= lua5.4
BUSTED      ?= busted

LUA_INCDIR  ?= $(shell $(PKG_CONFIG) --variable=includedir $(LUA_PC))/lua5.4
CURL_CFLAGS := $(shell $(PKG_CONFIG) --cflags libcurl)
CURL_LIBS   := $(shell $(PKG_CONFIG) --libs libcurl)
EVENT_CFLAGS:= $(shell $(PKG_CONFIG) --cflags libevent_core libevent_extra)
EVENT_LIBS  := $(shell $(PKG_CONFIG) --libs libevent_core libevent_extra)
LUA_LIBS    := $(shell $(PKG_CONFIG) --libs $(LUA_PC))
SSL_CFLAGS  := $(shell $(PKG_CONFIG) --cflags openssl)
SSL_LIBS    := $(shell $(PKG_CONFIG) --libs openssl)
CARES_CFLAGS:= $(shell $(PKG_CONFIG) --cflags libcares)
CARES_LIBS  := $(shell $(PKG_CONFIG) --libs libcares)

PREFIX      ?= /usr/local
LUADIR      ?= $(PREFIX)/share/lua/5.4
LIBDIR      ?= $(PREFIX)/lib/lua/5.4
BINDIR      ?= $(PREFIX)/bin
DOCDIR      ?= $(PREFIX)/share/doc/sonde

CC          ?= cc
CFLAGS      ?= -O2 -g
LIBFLAG     ?= -shared
WARN        := -Wall -Wextra -Werror -Wshadow -Wundef -Wwrite-strings \
               -Wmissing-prototypes -Wstrict-prototypes
ifeq ($(SANITIZE),1)
SANFLAGS    := -fsanitize=address,undefined -fno-omit-frame-pointer \
               -fno-sanitize-recover=undefined
BUILD       := build-san
else
SANFLAGS    :=
BUILD       := build
endif
ALL_CFLAGS  := -std=c11 -fPIC $(WARN) $(CFLAGS) $(SANFLAGS) -Iinclude \
               -I$(LUA_INCDIR) $(CURL_CFLAGS) $(EVENT_CFLAGS) $(SSL_CFLAGS) \
               $(CARES_CFLAGS) \
               -DSONDE_VERSION='"$(VERSION)"'

CORE_SRC    := src/expand.c src/result.c src/loop.c src/curlsock.c \
               src/curlerr.c src/exec.c src/http.c src/resolve.c src/tcp.c \
               src/pb.c src/grpc.c src/icmp.c src/dns.c \
               src/tls.c src/tls_io.c \
               src/pattern.c src/expect.c \
               src/lsonde.c \
               src/lhttpd.c src/lprocstat.c src/lnotify.c \
               src/ldeadline.c src/logq.c src/worker.c src/lworker.c \
               src/expo.c src/lexpo.c \
               src/ltargets.c src/lregex.c src/resolve_op.c
CORE_OBJ    := $(CORE_SRC:src/%.c=$(BUILD)/obj/%.o)
HOST_OBJ    := $(BUILD)/obj/host/main.o
MODULE      := $(BUILD)/lib/sonde/core.so
HOST        := $(BUILD)/bin/sonde
FIXTURE     := $(BUILD)/test/fixture-server
RAW         := $(BUILD)/bench/raw

.PHONY: all check demo demo-probes bench bench-memory bench-concurrency soak env install clean format-check
all: $(MODULE) $(HOST)

$(BUILD)/obj/%.o: src/%.c $(wildcard include/sonde/*.h) src/internal.h src/lsonde.h \
                   src/logq.h src/resolve_op.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

# The module does not link liblua: the interpreter that loads it provides it.
$(MODULE): $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(SANFLAGS) -o $@ $^ $(CURL_LIBS) $(EVENT_LIBS) $(SSL_LIBS) \
	  $(CARES_LIBS) -lz -lm

# The host exports Lua's symbols (-Wl,-E) so that C modules it loads link;
# it holds no copy of the core: it loads the module (sonde.core) as any
# Lua interpreter does, from the lib directory beside its own (host/main.c).
$(HOST): $(HOST_OBJ) | $(MODULE)
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) -Wl,-E -o $@ $(HOST_OBJ) $(LUA_LIBS) -lm

$(FIXTURE): spec/fixtures/fixture-server.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) $(CFLAGS) $(SANFLAGS) $(EVENT_CFLAGS) -o $@ $< \
	  $(EVENT_LIBS)

# The benchmark's raw C baseline (bench/raw.c), built as the engine is.
$(RAW): bench/raw.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(CURL_LIBS) $(EVENT_LIBS) $(SSL_LIBS)

# Debian packages the build needs (and what runs with it: lua-cjson for
# json expectations), and those the tests need too; installed when missing
# (`make deps`, `make test-deps`).
DEB_PKGS  := gcc make pkg-config lua5.4 liblua5.4-dev libcurl4-openssl-dev \
             libevent-dev libssl-dev lua-yaml lua-cjson \
             libc-ares-dev zlib1g-dev
TEST_PKGS := lua-busted luarocks procps openssl monitoring-plugins-basic \
             prometheus python3 lua-socket curl \
             python3-grpcio python3-grpc-tools dnsmasq-base \
             prometheus-blackbox-exporter
.PHONY: deps test-deps
deps:
	@$(MAKE) -s install-pkgs PKGS="$(DEB_PKGS)"
test-deps:
	@$(MAKE) -s install-pkgs PKGS="$(DEB_PKGS) $(TEST_PKGS)"
.PHONY: install-pkgs
install-pkgs:
	@missing=""; for p in $(PKGS); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root, or install:$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

SAN_ENV :=
ifeq ($(SANITIZE),1)
# (a small quarantine, as for the soak: the default 256 MB of freed memory
# held back shows as RSS growth in the specs that check memory is flat)
SAN_ENV := LD_PRELOAD="$(shell $(CC) -print-file-name=libasan.so) $(shell $(CC) -print-file-name=libubsan.so)" \
           ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:quarantine_size_mb=16 UBSAN_OPTIONS=print_stacktrace=1
endif

# .busted holds the module paths; spec/support/setup.lua puts this build's
# module first and builds nothing when SONDE_BUILD is set.
TEST_ENV := SONDE_BUILD="$(CURDIR)/$(BUILD)"

check: test-deps
	$(MAKE) all $(FIXTURE)
	$(TEST_ENV) $(SAN_ENV) $(BUSTED) --lua=$(LUA) $(BUSTED_ARGS)

# The Kubernetes liveness-exec example with short timings: the health
# file goes after 10 s, probes every 2 s; about 40 s show successes, the
# failures counted, the restart and success again; then SIGTERM stops it.
demo: deps
	$(MAKE) all
	@dir=$$(mktemp -d); trap 'rm -rf $$dir' EXIT; \
	SONDE_DEMO_FILE=$$dir/healthy timeout --preserve-status -s TERM 40 \
	  $(HOST) --log-level debug examples/liveness-exec.lua 10 2

# Ten probes of every kind at once against the fixture server.
demo-probes: deps
	$(MAKE) all $(FIXTURE)
	@log=$$(mktemp); \
	$(FIXTURE) --max-seconds 60 > $$log & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; rm -f $$log' EXIT; \
	for i in 1 2 3 4 5 6 7 8 9 10; do grep -q PORT $$log && break; sleep 0.2; done; \
	port=$$(sed -n 's/^PORT //p' $$log); \
	$(HOST) examples/concurrent.lua http://127.0.0.1:$$port

# The benchmark (bench/bench.lua): per probe kind, the raw C baseline
# (bench/raw.c), the probers from Lua, declared probes under the host and
# blackbox_exporter, against the fixture server; medians of 3 rounds, the
# targets met or missed; a few minutes (BENCH_QUICK=1: shorter windows).
# `make bench-memory`: the no-growth check, 1,000 probes at 1,000 runs/s
# for BENCH_MEMORY seconds (600).  Whatever the run leaves is killed, by
# the pids it recorded, and only while they carry its BENCH_DIR.
BENCH_PKGS := prometheus-blackbox-exporter binutils
BENCH_RUN   = dir=$$(mktemp -d /tmp/sonde-bench.XXXXXX); \
	cleanup() { if [ -f $$dir/pids ]; then while read p; do \
	  if tr '\0' '\n' 2>/dev/null </proc/$$p/environ | grep -qx "BENCH_DIR=$$dir"; then \
	    kill -KILL $$p 2>/dev/null; fi; done < $$dir/pids; fi; rm -rf $$dir; }; \
	trap cleanup EXIT; trap 'exit 130' INT TERM; \
	BENCH_DIR=$$dir $(LUA) bench/bench.lua $(HOST) $(MODULE) $(RAW) $(FIXTURE)
bench: deps
	@$(MAKE) -s install-pkgs PKGS="$(BENCH_PKGS)"
	$(MAKE) all $(FIXTURE) $(RAW)
	@$(BENCH_RUN)
bench-memory: deps
	@$(MAKE) -s install-pkgs PKGS="$(BENCH_PKGS)"
	$(MAKE) all $(FIXTURE) $(RAW)
	@BENCH_MEMORY=$${BENCH_MEMORY:-600}; export BENCH_MEMORY; $(BENCH_RUN)

# What running probes at once on the loop buys: N probes one after
# another, then at once, and the ratio (bench/probes.lua).
bench-concurrency: deps
	$(MAKE) all $(FIXTURE)
	@log=$$(mktemp); \
	$(FIXTURE) --max-seconds 120 > $$log & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; rm -f $$log' EXIT; \
	for i in 1 2 3 4 5 6 7 8 9 10; do grep -q PORT $$log && break; sleep 0.2; done; \
	port=$$(sed -n 's/^PORT //p' $$log); \
	$(HOST) bench/probes.lua http://127.0.0.1:$$port

# The soak: about 200 probes, half against hostile peers and commands, for
# SOAK_SECONDS (60); prints figures and "N passed, N failed".
SOAK_SECONDS ?= 60
ifeq ($(SANITIZE),1)
SOAK_SLACK  ?= 0.3
else
SOAK_SLACK  ?= 0.1
endif
soak: test-deps
	$(MAKE) all $(FIXTURE)
	SOAK_SLACK=$(SOAK_SLACK) SOAK_ENV='ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:quarantine_size_mb=16 UBSAN_OPTIONS=print_stacktrace=1' \
	  $(LUA) bench/soak.lua $(HOST) $(FIXTURE) $(SOAK_SECONDS)

env:
	@echo 'export LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;"'
	@echo 'export LUA_CPATH="$(CURDIR)/build/lib/?.so;;"'

install: all
	install -d $(DESTDIR)$(LIBDIR)/sonde $(DESTDIR)$(LUADIR)/sonde/host \
	  $(DESTDIR)$(BINDIR)
	install -m 755 $(MODULE) $(DESTDIR)$(LIBDIR)/sonde/core.so
	install -m 644 lua/sonde/*.lua $(DESTDIR)$(LUADIR)/sonde/
	install -m 644 lua/sonde/host/*.lua $(DESTDIR)$(LUADIR)/sonde/host/
	install -d $(DESTDIR)$(LUADIR)/sonde/blackbox
	install -m 644 lua/sonde/blackbox/*.lua $(DESTDIR)$(LUADIR)/sonde/blackbox/
	install -d $(DESTDIR)$(DOCDIR)
	install -m 644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -m 755 $(HOST) $(DESTDIR)$(BINDIR)/sonde

format-check:
	clang-format --dry-run --Werror src/*.c src/*.h src/host/*.c include/sonde/*.h

clean:
	rm -rf build build-san
