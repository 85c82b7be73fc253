# Top-level wrapper around CMake. `make demo` and `make test` do all set-up on
# a fresh Debian machine (missing packages are installed when run as root).
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# libclang-rt-dev: the sanitizer and libFuzzer runtimes (clang only recommends it).
DEB_PACKAGES = cmake gcc clang libclang-rt-dev make pkg-config libssl-dev libcbor-dev \
               libcmocka-dev python3 valgrind

.PHONY: all deps build demo test test-plain test-asan test-tsan test-valgrind bench fuzz install clean

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || \
	    missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	fi

$(BUILD)/Makefile: | deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	@./examples/tour.sh $(BUILD)

# Every test: the plain build, then ASan+UBSan, then TSan.
test: test-plain test-asan test-tsan

test-plain: build
	cd $(BUILD) && ctest --output-on-failure -j 2

test-asan: deps
	cmake -S . -B build-asan -DMPROC_SANITIZE=address -DCMAKE_C_COMPILER=clang \
	      -DMPROC_EXAMPLES=OFF -DMPROC_BENCH=OFF >/dev/null
	cmake --build build-asan -j $(JOBS)
	cd build-asan && MPROC_TEST_SLOW=4 ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j 2

test-tsan: deps
	cmake -S . -B build-tsan -DMPROC_SANITIZE=thread -DCMAKE_C_COMPILER=clang \
	      -DMPROC_EXAMPLES=OFF -DMPROC_BENCH=OFF >/dev/null
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && MPROC_TEST_SLOW=6 ctest --output-on-failure -j 2

# The process and sync tests (and core) under valgrind's memcheck; a test
# not built yet is skipped with a note. Under valgrind the arena is 256 MiB
# (src/arena.c); test_core allocates a 300 MiB block, so it gets 1 GiB.
VALGRIND = valgrind -q --error-exitcode=1 --trace-children=no \
           --leak-check=full --errors-for-leak-kinds=definite
VALGRIND_TESTS = test_core test_process test_sync
test-valgrind: build
	@status=0; for t in $(VALGRIND_TESTS); do \
	  if [ ! -x $(BUILD)/tests/$$t ]; then echo "test-valgrind: $$t not built, skipped"; continue; fi; \
	  size=; [ $$t = test_core ] && size=1G; echo "== valgrind $$t"; \
	  (cd $(BUILD)/tests && MPROC_ARENA_SIZE=$$size MPROC_TEST_SLOW=8 \
	   MPROC_SOURCE_DIR=$(CURDIR) MPROC_BINARY_DIR=$(abspath $(BUILD)) \
	   timeout 1200 $(VALGRIND) ./$$t) || status=1; \
	done; exit $$status

bench: build
	@./bench/run.sh $(BUILD) $(AREAS)

fuzz: deps
	cmake -S . -B build-fuzz -DMPROC_FUZZ=ON -DCMAKE_C_COMPILER=clang -DMPROC_SANITIZE=address \
	      -DMPROC_EXAMPLES=OFF -DMPROC_BENCH=OFF -DMPROC_TESTS=OFF >/dev/null
	cmake --build build-fuzz -j $(JOBS)
	@./fuzz/run.sh build-fuzz $(FUZZ_SECONDS)

install: build
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX))

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz
