#!/bin/sh
# tests/format.sh: fails when a C file does not follow .clang-format.
# Skipped (exit 77) where clang-format is not installed; .ci/run installs it.
top_srcdir=${top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
command -v clang-format >/dev/null 2>&1 || { echo "clang-format not installed: skipped"; exit 77; }
cd "$top_srcdir" || exit 99
files=$(ls src/*.c src/*.h tests/fuzz/*.c bench/load/*.c bench/load/*.h bench/mock/*.c bench/mock/*.h tests/unit/*.c tests/unit/*.h 2>/dev/null)
out=$(clang-format --dry-run $files 2>&1)
if [ -n "$out" ]; then
    echo "$out" | head -40
    echo "These files differ from .clang-format; run: clang-format -i $files" | fold -w 100
    exit 1
fi
echo "$(echo "$files" | wc -w) files follow .clang-format"
