#!/usr/bin/env bash
# session 26, call 6: gpu_test_cuda after the review commit (bits_differ helper in the tests;
# kernel SASS identical).
set -u
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
mkdir -p $OUT/r6
timeout 90 /tmp/fdb/bin/gpu_test_cuda --jobs 1 > $OUT/r6/gpu_test_cuda.log 2>&1; echo "rc=$?" >> $OUT/r6/gpu_test_cuda.log
grep -E "Synthesis|Assertion" $OUT/r6/gpu_test_cuda.log; tail -1 $OUT/r6/gpu_test_cuda.log
