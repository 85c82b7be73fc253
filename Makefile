# Top-level wrapper around CMake. `make` and `make install` need only a C
# compiler, CMake, OpenSSL and libcbor. `make demo` and `make test` first do
# all set-up on a fresh Debian machine (missing packages are installed when
# run as root); elsewhere they name what they need and go on.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# Warnings are errors in CI (CI=true), not on a packager's newer compiler.
WERROR = -DMPROC_WERROR=$(if $(CI),ON,OFF)
# libclang-rt-dev: the sanitizer and libFuzzer runtimes (clang only recommends it).
# abigail-tools: abidiff, for the ABI check against abi/libmproc.abi.
DEB_PACKAGES = cmake gcc clang libclang-rt-dev make pkg-config libssl-dev libcbor-dev \
               libcmocka-dev python3 valgrind libopenmpi-dev openmpi-bin abigail-tools
# The other libraries bench/peers/ measures mproc against: `make bench` only.
BENCH_DEB_PACKAGES = g++ libboost-dev libzmq3-dev
DEPS_PACKAGES = $(DEB_PACKAGES)

.PHONY: all deps build demo test test-fuzz test-plain test-asan test-tsan test-valgrind bench fuzz install clean soak

all: build

deps:
	@if ! command -v dpkg-query >/dev/null; then \
	  echo "not a Debian system: make sure these (Debian names) are installed:"; \
	  echo "  $(DEPS_PACKAGES)"; exit 0; fi; \
	missing=""; for p in $(DEPS_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || \
	    missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	fi

$(BUILD)/Makefile:
	cmake -S . -B $(BUILD) $(WERROR) $(CMAKE_FLAGS) >/dev/null

build: $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

# The build is quiet here: one line, and the whole log only if it fails.
demo: deps
	@mkdir -p $(BUILD); log=$(BUILD)/demo-build.log; \
	if { [ -f $(BUILD)/Makefile ] || cmake -S . -B $(BUILD) $(WERROR) $(CMAKE_FLAGS); } >$$log 2>&1 && \
	   cmake --build $(BUILD) -j $(JOBS) >>$$log 2>&1; then \
	  echo "Built mproc and its examples in $(BUILD)/ (full log: $$log)."; \
	else cat $$log; echo "The build failed: the log is above and in $$log."; exit 1; fi
	@./examples/tour.sh $(BUILD)

# Every test: the plain build, ASan+UBSan, TSan, valgrind on the process and
# sync tests, then each fuzz target for FUZZ_SECONDS (20 s by default here).
test: test-plain test-asan test-tsan test-valgrind test-fuzz

test-fuzz:
	$(MAKE) fuzz FUZZ_SECONDS=$(or $(FUZZ_SECONDS),20)

test-plain: deps
	@$(MAKE) --no-print-directory build
	cd $(BUILD) && ctest --output-on-failure -j 2

test-asan: deps
	cmake -S . -B build-asan $(WERROR) -DMPROC_SANITIZE=address -DCMAKE_C_COMPILER=clang \
	      -DMPROC_EXAMPLES=OFF -DMPROC_BENCH=OFF >/dev/null
	cmake --build build-asan -j $(JOBS)
	cd build-asan && MPROC_TEST_SLOW=4 ASAN_OPTIONS=detect_leaks=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp ctest --output-on-failure -j 2

test-tsan: deps
	cmake -S . -B build-tsan $(WERROR) -DMPROC_SANITIZE=thread -DCMAKE_C_COMPILER=clang \
	      -DMPROC_EXAMPLES=OFF -DMPROC_BENCH=OFF >/dev/null
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && MPROC_TEST_SLOW=6 ctest --output-on-failure -j 2

# The core, process, sync, queue, conn and manager tests under valgrind's
# memcheck; a test not built yet is skipped with a note (tests/valgrind.sh).
# They run side by side, the longest first (75, 55, 25 s... alone here).
VALGRIND_TESTS = test_queue test_manager test_core test_process test_conn \
                 test_pipe_shm test_sync test_spawn test_lock test_condition \
                 test_process_errors test_barrier test_worst_moment test_queue_shared \
                 test_pass_fds test_thread test_errors test_conn_fd
test-valgrind: deps
	@$(MAKE) --no-print-directory build
	@./tests/valgrind.sh $(BUILD) $(VALGRIND_TESTS)

bench: DEPS_PACKAGES = $(DEB_PACKAGES) $(BENCH_DEB_PACKAGES)
bench: deps
	@$(MAKE) --no-print-directory build
	@./bench/run.sh $(BUILD) $(AREAS)

# The manager soak at full length (SOAK_SECONDS, 600 by default): clients
# over unix and TCP killed at random; make test runs a 60-second one.
soak: build
	cd $(BUILD) && MPROC_SOAK_SECONDS=$(or $(SOAK_SECONDS),600) MPROC_BINARY_DIR=$(CURDIR)/$(BUILD) \
	  ./tests/test_manager_soak

fuzz: deps
	cmake -S . -B build-fuzz $(WERROR) -DMPROC_FUZZ=ON -DCMAKE_C_COMPILER=clang -DMPROC_SANITIZE=address \
	      -DMPROC_EXAMPLES=OFF -DMPROC_BENCH=OFF -DMPROC_TESTS=OFF >/dev/null
	cmake --build build-fuzz -j $(JOBS)
	@./fuzz/run.sh build-fuzz $(FUZZ_SECONDS)

install: build
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX))

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz
