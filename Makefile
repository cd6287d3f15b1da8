# Thin wrapper over CMake; see README.md.
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
LAUNCHER := $(shell command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
FUZZ_SECONDS ?= 60

.PHONY: all deps build build-asan test test-unit test-asan test-e2e fuzz demo bench format clean

all: build

deps:
	scripts/deps.sh

# Every build first makes sure the dependencies are there (a no-op once they
# are), so `make demo` and `make test` work on a fresh machine.
.deps-stamp: scripts/deps.sh
	scripts/deps.sh
	touch $@

$(BUILD)/build.ninja: .deps-stamp
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(LAUNCHER) $(CMAKE_FLAGS)

build: .deps-stamp $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

$(ASAN_BUILD)/build.ninja: .deps-stamp
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DOUTPOST_SANITIZE=ON \
	  -DOUTPOST_BUILD_BENCH=OFF $(LAUNCHER) $(CMAKE_FLAGS)

build-asan: $(ASAN_BUILD)/build.ninja
	cmake --build $(ASAN_BUILD) -j $(JOBS)

# make test: every test — unit and end-to-end on the release build, the unit
# tests again under ASan+UBSan, and the fuzzers briefly.
test: build build-asan
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -L unit -j $(JOBS)
	$(MAKE) fuzz

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -L unit -j $(JOBS)

test-e2e: build
	cd $(BUILD) && ctest --output-on-failure -L e2e

$(FUZZ_BUILD)/build.ninja: .deps-stamp
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DOUTPOST_FUZZ=ON -DOUTPOST_BUILD_TESTS=OFF -DOUTPOST_BUILD_BENCH=OFF $(LAUNCHER) $(CMAKE_FLAGS)

fuzz: $(FUZZ_BUILD)/build.ninja
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzzers
	scripts/run_fuzzers.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

demo: build
	scripts/demo.sh $(BUILD)

bench: build
	scripts/bench.sh $(BUILD)

format:
	git ls-files '*.cc' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
