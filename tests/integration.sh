#!/bin/sh
# tests/integration.sh: runs the pytest integration suite for `make check`.
# Uses Debian's python3-pytest through /usr/bin/python3 so that a pyenv or
# virtualenv python on PATH cannot change what runs.
top_srcdir=${top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
top_builddir=${top_builddir:-$top_srcdir}
export top_srcdir top_builddir
cd "$top_srcdir/tests/integration" || exit 99
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider -o console_output_style=classic \
    ${PYTEST_ARGS:-} .
