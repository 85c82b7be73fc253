# Top-level wrapper around CMake. `make demo` and `make test` do all set-up on
# a fresh Debian machine (missing packages are installed when run as root).
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# libclang-rt-dev: the sanitizer and libFuzzer runtimes (clang only recommends it).
DEB_PACKAGES = cmake gcc clang libclang-rt-dev make pkg-config libssl-dev libcbor-dev \
               libcmocka-dev python3 valgrind libopenmpi-dev openmpi-bin

.PHONY: all deps build demo test test-fuzz test-plain test-asan test-tsan test-valgrind bench fuzz install clean soak

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

# Every test: the plain build, ASan+UBSan, TSan, valgrind on the process and
# sync tests, then each fuzz target for FUZZ_SECONDS (20 s by default here).
test: test-plain test-asan test-tsan test-valgrind test-fuzz

test-fuzz:
	$(MAKE) fuzz FUZZ_SECONDS=$(or $(FUZZ_SECONDS),20)

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

# The core, process, sync, queue, conn and manager tests under valgrind's
# memcheck; a test not built yet is skipped with a note (tests/valgrind.sh).
VALGRIND_TESTS = test_core test_process test_spawn test_thread \
                 test_sync test_lock test_condition test_barrier \
                 test_queue test_conn test_pipe_shm test_worst_moment test_manager
test-valgrind: build
	@./tests/valgrind.sh $(BUILD) $(VALGRIND_TESTS)

bench: build
	@./bench/run.sh $(BUILD) $(AREAS)

# The manager soak at full length (SOAK_SECONDS, 600 by default): clients
# over unix and TCP killed at random; make test runs a 60-second one.
soak: build
	cd $(BUILD) && MPROC_SOAK_SECONDS=$(or $(SOAK_SECONDS),600) MPROC_BINARY_DIR=$(CURDIR)/$(BUILD) \
	  ./tests/test_manager_soak

fuzz: deps
	cmake -S . -B build-fuzz -DMPROC_FUZZ=ON -DCMAKE_C_COMPILER=clang -DMPROC_SANITIZE=address \
	      -DMPROC_EXAMPLES=OFF -DMPROC_BENCH=OFF -DMPROC_TESTS=OFF >/dev/null
	cmake --build build-fuzz -j $(JOBS)
	@./fuzz/run.sh build-fuzz $(FUZZ_SECONDS)

install: build
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX))

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz
