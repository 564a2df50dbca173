# tools/common.sh: shell helpers that tools/quickstart, bench/run and docker/smoke-test
# share. Sourced, never run; the caller sets SAY_PREFIX and works from the repository's top.
#
#   say TEXT...                  a bold "PREFIX:" line on stderr
#   as_root CMD...               CMD as root (directly, or with sudo)
#   install_missing PKG...       installs the Debian packages not installed yet
#   build                        autoreconf (when needed), configure (when needed), make
#   make_pki DIR                 a throwaway CA (ca.pem) and a server certificate for
#                                localhost and 127.0.0.1 (server.pem, server.key) in DIR
#   start_mock DIR [ARGS...]     bench/stmock over TLS with DIR's certificate; sets MOCK_PID,
#                                MOCK_API_PORT and MOCK_ADMIN_PORT

BUILD_PACKAGES="build-essential autoconf automake pkg-config libevent-dev libssl-dev
    libhiredis-dev libjsmn-dev libinih-dev"

say() { printf '\033[1m%s:\033[0m %s\n' "${SAY_PREFIX:-stproxy}" "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root (or sudo) to run: $*"
        exit 1
    fi
}

install_missing() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
}

build() {
    if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt configure ]; then
        say "generating configure"
        autoreconf -fi
    fi
    if [ ! -f Makefile ] || [ configure -nt Makefile ]; then
        ./configure
    fi
    make -j"$(nproc)"
}

make_pki() {
    local dir=$1
    mkdir -p "$dir"
    [ -f "$dir/server.pem" ] && return 0
    say "making a throwaway CA and a certificate for localhost in $dir"
    (cd "$dir" &&
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout ca.key -out ca.pem -days 30 -subj "/CN=stproxy throwaway CA" 2>/dev/null &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null &&
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >server.ext &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out server.pem -days 30 -extfile server.ext 2>/dev/null)
}

start_mock() {
    local dir=$1 ready
    shift
    ready="$dir/mock.ready"
    rm -f "$ready"
    bench/stmock --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --cert "$dir/server.pem" --key "$dir/server.key" --ready-file "$ready" "$@" >/dev/null &
    MOCK_PID=$!
    for _ in $(seq 100); do [ -f "$ready" ] && break; sleep 0.05; done
    [ -f "$ready" ] || { say "the mock API did not start"; exit 1; }
    MOCK_API_PORT=$(sed -n 's/.* api=[^:]*:\([0-9]*\).*/\1/p' "$ready")
    MOCK_ADMIN_PORT=$(sed -n 's/.* admin=[^:]*:\([0-9]*\).*/\1/p' "$ready")
}
