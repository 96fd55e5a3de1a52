#!/usr/bin/env bash
# Build pgwake's Docker images locally, with no image registry: each base image is a debootstrap
# root imported with `docker import`, and pgwake:dev is built on top from a host-made wheelhouse.
#
#   deploy/docker/build-images.sh [--force] [--postgres-only | --pgwake-only] [--no-check]
#
#   pgwake-postgres:13     bullseye + postgresql-13        (USER postgres, PATH has initdb/postgres)
#   pgwake-postgres:15     bookworm + postgresql-15
#   pgwake-postgres:17     trixie   + postgresql-17        (psql and libpq 17 too)
#   pgwake-base:bookworm   bookworm + postgresql-15 python3 python3-venv ca-certificates tini
#   pgwake:dev             deploy/Dockerfile on pgwake-base, pgwake from a wheelhouse of this tree
#
# Rule: an image is built only when it is missing or its label says it is stale (unless --force).
# Base images carry `pgwake.recipe=$RECIPE`; bump RECIPE whenever what goes into them changes.
# pgwake:dev carries `pgwake.source`, a hash of the files its wheel and Dockerfile are made from
# and of the base image, so an unchanged tree costs a few seconds. Each new image is checked
# (Postgres starts as user postgres on a fresh volume and answers psql; `pgwake --help` runs)
# unless --no-check.
#
# Needs root, a running engine (deploy/docker/engine.sh up), debootstrap (installed if missing)
# and, for pgwake:dev, a host python3.11 whose pip can reach an index (the wheels must match the
# image's Python 3.11). The Debian mirror is the machine's own: the first http(s) Debian archive
# in its apt sources (override: PGWAKE_DEBIAN_MIRROR). Temporary roots go under TMPDIR.
set -euo pipefail

RECIPE=2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Files that determine pgwake:dev (the wheel is built from the first three).
PGWAKE_SOURCES=(pyproject.toml README.md proxy deploy/Dockerfile)
# major:suite for each Postgres image.
POSTGRES_IMAGES=(13:bullseye 15:bookworm 17:trixie)
BASE_TAG=pgwake-base:bookworm
BASE_PACKAGES=postgresql-15,python3,python3-venv,ca-certificates,tini
PGWAKE_TAG=pgwake:dev
PYTHON=${PGWAKE_PYTHON:-python3}

force=0 do_postgres=1 do_pgwake=1 check=1
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
while (($#)); do
    case $1 in
    --force) force=1 ;;
    --postgres-only) do_pgwake=0 ;;
    --pgwake-only) do_postgres=0 ;;
    --no-check) check=0 ;;
    -h | --help) usage; exit 0 ;;
    *) printf 'build-images.sh: unknown argument %s\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { printf 'build-images.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The value of label KEY on image TAG ("" if unset); fails if TAG is missing.
label() {
    local value
    value=$(docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null) || return 1
    [[ $value == "<no value>" ]] && value=
    printf '%s\n' "$value"
}

# The image TAG names now ("" if none): after a rebuild, drop_superseded removes it.
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
drop_superseded() {
    local old=$1 tag=$2
    [[ -n $old && $old != "$(image_id "$tag")" ]] || return 0
    # Fails, harmlessly, while a container or another tag still uses it.
    if docker rmi "$old" >/dev/null 2>&1; then log "$tag: removed the superseded image ${old:7:12}"; fi
}

# Whether TAG must be built: missing, built from another recipe/source, or --force.
needs_build() {
    local tag=$1 key=$2 want=$3 have
    ((force)) && return 0
    have=$(label "$tag" "$key") || { log "$tag: missing"; return 0; }
    if [[ $have != "$want" ]]; then
        log "$tag: stale ($key ${have:-unset}, want $want)"
        return 0
    fi
    log "$tag: up to date"
    return 1
}

# The first http(s) URI of a Debian main archive in the apt sources, in apt's own reading order:
# sources.list, then sources.list.d/ by name. A Debian archive: "debian" in the URI but not
# "security", a Debian suite name (e.g. bookworm, bookworm-updates, stable) and component main.
debian_mirror() {
    if [[ -n ${PGWAKE_DEBIAN_MIRROR:-} ]]; then
        printf '%s\n' "${PGWAKE_DEBIAN_MIRROR%/}"
        return
    fi
    local files=() f LC_ALL=C # apt reads sources.list, then sources.list.d/ in name order
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
        [[ -r $f && ($f == /etc/apt/sources.list || $f == *.list || $f == *.sources) ]] && files+=("$f")
    done
    ((${#files[@]})) || return 1
    awk '
        function debian_suite(s) {
            sub(/-(updates|backports|proposed-updates|backports-sloppy)$/, "", s)
            return s ~ /^(buster|bullseye|bookworm|trixie|forky|duke|sid|oldoldstable|oldstable|stable|testing|unstable)$/
        }
        function consider(uris, suites, comps,   u, s, nu, ns, i, j) {
            if (found || comps !~ /(^| )main( |$)/) return
            nu = split(uris, u, " "); ns = split(suites, s, " ")
            for (i = 1; i <= nu; i++) {
                if (u[i] !~ /^https?:\/\// || tolower(u[i]) !~ /debian/ || u[i] ~ /security/) continue
                for (j = 1; j <= ns; j++)
                    if (debian_suite(s[j])) { sub(/\/+$/, "", u[i]); print u[i]; found = 1; exit }
            }
        }
        function flush() {
            if (types ~ /(^| )deb( |$)/ && enabled !~ /^(no|false)$/) consider(uris, suites, comps)
            types = uris = suites = comps = enabled = ""
        }
        FNR == 1 { flush(); deb822 = FILENAME ~ /\.sources$/ }
        deb822 && /^#/ { next }  # a comment line, not a paragraph break
        { sub(/#.*/, "") }
        deb822 && /^[ \t]*$/ { flush(); next }
        deb822 {
            key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
            if (key == "types") types = $0
            else if (key == "uris") uris = $0
            else if (key == "suites") suites = $0
            else if (key == "components") comps = $0
            else if (key == "enabled") enabled = tolower($0)
            next
        }
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            c = ""; for (j = i + 2; j <= NF; j++) c = c " " $j
            consider($i, $(i + 1), c)
        }
        END { flush() }
    ' "${files[@]}"
}

# debootstrap verifies suites against the archive keyring; a suite the keyring cannot verify
# (a release newer than the machine's debian-archive-keyring) is bootstrapped unverified.
gpg_args_for() {
    local suite=$1 mirror=$2 inrelease
    inrelease=$(mktemp)
    if [[ -r $KEYRING ]] && wget -q -O "$inrelease" "$mirror/dists/$suite/InRelease" &&
        gpgv --keyring "$KEYRING" "$inrelease" >/dev/null 2>&1; then
        rm -f "$inrelease"
        printf '%s\n' "--keyring=$KEYRING"
        return
    fi
    rm -f "$inrelease"
    log "############################################################################"
    log "WARNING: $KEYRING cannot verify $mirror/dists/$suite/InRelease."
    log "WARNING: bootstrapping $suite WITHOUT signature checks (--no-check-gpg)."
    log "WARNING: install a newer debian-archive-keyring to get verified images."
    log "############################################################################"
    printf '%s\n' --no-check-gpg
}

# Unmount anything left mounted below $1 (a failed debootstrap can leave /proc, /sys), then
# delete it without crossing into other file systems.
remove_root() {
    local dir=$1 mnt
    [[ -n $dir && -d $dir ]] || return 0
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$dir"
}

WORK='' BASE_SUPERSEDED=''
cleanup() { [[ -z $WORK ]] || remove_root "$WORK"; }
trap cleanup EXIT

# Shrink a bootstrapped root: no package caches, lists, docs (copyright files stay), man pages,
# translations or logs; no host identity; no main cluster from postgresql-common's postinst.
# No JIT either: llvmjit and libLLVM are 130 MB of each image, and without its provider Postgres
# quietly runs without JIT (jit.c: "provider not available"). dpkg still lists the files; these
# images are never upgraded in place, they are rebuilt.
slim_root() {
    local root=$1
    rm -rf "$root"/usr/lib/postgresql/*/lib/bitcode "$root"/usr/lib/postgresql/*/lib/llvmjit* \
        "$root"/usr/lib/*/libLLVM*
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
        "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old \
        "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/postgresql/*/man \
        "$root"/var/lib/postgresql/*/main "$root"/etc/postgresql/*/main
    [[ ! -d $root/usr/share/locale ]] ||
        find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    find "$root"/usr/share/doc -type f ! -name copyright -delete
    find "$root"/usr/share/doc -depth -type d -empty -delete
    find "$root"/var/log -type f -delete
    : >"$root"/etc/resolv.conf
    : >"$root"/etc/hostname
}

# bootstrap SUITE PACKAGES: debootstrap a slimmed minbase root into $WORK/root (a new $WORK).
bootstrap() {
    local suite=$1 packages=$2 mirror start
    mirror=$(debian_mirror) || die "no http(s) Debian mirror in /etc/apt/sources*; set PGWAKE_DEBIAN_MIRROR"
    local gpg
    gpg=$(gpg_args_for "$suite" "$mirror")
    WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/pgwake-image.XXXXXX")
    start=$SECONDS
    log "debootstrap $suite from $mirror with $packages (log $WORK/debootstrap.log)"
    if ! debootstrap --variant=minbase --components=main --include="$packages" "$gpg" \
        "$suite" "$WORK/root" "$mirror" </dev/null >"$WORK/debootstrap.log" 2>&1; then
        tail -n 40 "$WORK/debootstrap.log" >&2
        [[ -f $WORK/root/debootstrap/debootstrap.log ]] && tail -n 40 "$WORK/root/debootstrap/debootstrap.log" >&2
        die "debootstrap of $suite failed"
    fi
    log "debootstrap $suite took $((SECONDS - start)) s"
    slim_root "$WORK/root"
}

# import_root TAG CHANGE...: import $WORK/root as TAG, then delete it.
import_root() {
    local tag=$1 start=$SECONDS
    shift
    local changes=() c
    for c in "$@"; do changes+=(-c "$c"); done
    # /dev stays empty: the engine provides one.
    tar --numeric-owner --exclude='./dev/*' -C "$WORK/root" -c . |
        docker import "${changes[@]}" -m "pgwake build-images.sh recipe $RECIPE" - "$tag" >/dev/null
    remove_root "$WORK"
    WORK=
    log "$tag: imported in $((SECONDS - start)) s, $(image_size "$tag")"
}

image_size() {
    docker image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'
}

build_postgres() {
    local major=$1 suite=$2 tag=pgwake-postgres:$1 start=$SECONDS old
    needs_build "$tag" pgwake.recipe "$RECIPE" || return 0
    old=$(image_id "$tag")
    bootstrap "$suite" "postgresql-$major"
    local root=$WORK/root version uid
    # Socket directory and a data directory a fresh named volume inherits ownership from.
    chroot "$root" install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    chroot "$root" install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
    # shellcheck disable=SC2016  # a dpkg-query format, not a shell expansion
    version=$(chroot "$root" dpkg-query -W -f '${Version}' "postgresql-$major")
    uid=$(chroot "$root" id -u postgres)
    import_root "$tag" \
        'USER postgres' \
        'WORKDIR /var/lib/postgresql' \
        "ENV PATH=/usr/lib/postgresql/$major/bin:/usr/bin:/bin" \
        'ENV LANG=C.UTF-8' \
        'ENV PGDATA=/var/lib/postgresql/data' \
        "LABEL pgwake.recipe=$RECIPE pgwake.debian.suite=$suite pgwake.postgres.major=$major \
pgwake.postgres.version=$version pgwake.postgres.uid=$uid pgwake.postgres.jit=removed \
pgwake.postgres.bindir=/usr/lib/postgresql/$major/bin pgwake.postgres.datadir=/var/lib/postgresql/data"
    if ((check)); then check_postgres "$tag" "$major"; fi
    drop_superseded "$old" "$tag"
    log "$tag: built in $((SECONDS - start)) s"
}

# Postgres runs as postgres with its data on a fresh named volume, listens on the container's
# own loopback (no network: --network none) and on its default socket directory, and psql
# reaches it both ways.
check_postgres() {
    local tag=$1 major=$2 volume out
    volume=$(docker volume create)
    # shellcheck disable=SC2016  # expanded inside the container
    if ! out=$(docker run --rm --network none -v "$volume:/var/lib/postgresql/data" "$tag" sh -euc '
            initdb -A trust -U postgres >/dev/null
            pg_ctl -w -l /tmp/postgres.log -o "-c listen_addresses=127.0.0.1 -p 5432" start >/dev/null ||
                { cat /tmp/postgres.log; exit 1; }
            v=$(psql -X -h 127.0.0.1 -Atc "show server_version_num")
            echo $((v / 10000))
            psql -X -qAt -c "set jit_above_cost = 0" -c "select sum(i) from generate_series(1, 1000) i"
            psql --version
            pg_ctl -w -m fast stop >/dev/null' 2>&1); then
        docker volume rm -f "$volume" >/dev/null
        printf '%s\n' "$out" >&2
        die "$tag: check failed"
    fi
    docker volume rm -f "$volume" >/dev/null
    [[ $(sed -n 1p <<<"$out") == "$major" ]] || { printf '%s\n' "$out" >&2; die "$tag: server is not $major"; }
    log "$tag: check ok (server $major, $(sed -n 3p <<<"$out"))"
}

build_base() {
    local start=$SECONDS old
    needs_build "$BASE_TAG" pgwake.recipe "$RECIPE" || return 0
    old=$(image_id "$BASE_TAG")
    bootstrap bookworm "$BASE_PACKAGES"
    chroot "$WORK/root" install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    import_root "$BASE_TAG" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'ENV LANG=C.UTF-8' \
        "LABEL pgwake.recipe=$RECIPE pgwake.debian.suite=bookworm pgwake.packages=$BASE_PACKAGES"
    log "$BASE_TAG: built in $((SECONDS - start)) s"
    # Still the parent of the current pgwake:dev until that is rebuilt, which comes next.
    BASE_SUPERSEDED=$old
}

# Hash of PGWAKE_SOURCES as they are in the working tree, plus the base image's id.
pgwake_source_hash() {
    local base_id
    base_id=$(docker image inspect --format '{{.Id}}' "$BASE_TAG")
    {
        printf '%s\n' "$base_id"
        (cd "$REPO" && find "${PGWAKE_SOURCES[@]}" -type f ! -path '*/__pycache__/*' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -c1-16
}

build_pgwake() {
    local start=$SECONDS src old
    src=$(pgwake_source_hash)
    needs_build "$PGWAKE_TAG" pgwake.source "$src" || return 0
    old=$(image_id "$PGWAKE_TAG")
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
        die "$PYTHON is not Python 3.11 (the image's); set PGWAKE_PYTHON"
    WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/pgwake-image.XXXXXX")
    # Build from a copy so the shared tree gets no build/ or *.egg-info.
    mkdir -p "$WORK/src" "$WORK/context"
    tar -C "$REPO" --exclude=__pycache__ -c pyproject.toml README.md proxy | tar -C "$WORK/src" -x
    log "pip wheel: pgwake and its dependencies into the build context"
    if ! "$PYTHON" -m pip wheel --disable-pip-version-check --no-input \
        --wheel-dir "$WORK/context/wheelhouse" "$WORK/src" </dev/null >"$WORK/pip.log" 2>&1; then
        tail -n 40 "$WORK/pip.log" >&2
        die "pip wheel failed"
    fi
    log "docker build $PGWAKE_TAG ($(du -sh "$WORK/context/wheelhouse" | cut -f1) of wheels)"
    if ! docker build --file "$REPO/deploy/Dockerfile" --build-arg "BASE=$BASE_TAG" \
        --label "pgwake.source=$src" --tag "$PGWAKE_TAG" "$WORK/context" >"$WORK/build.log" 2>&1; then
        tail -n 40 "$WORK/build.log" >&2
        die "docker build of $PGWAKE_TAG failed"
    fi
    # The legacy builder keeps the install stage as a dangling image.
    docker image prune --force --filter label=pgwake.stage=install >/dev/null
    remove_root "$WORK"
    WORK=
    if ((check)); then
        docker run --rm --network none "$PGWAKE_TAG" pgwake --help >/dev/null ||
            die "$PGWAKE_TAG: pgwake --help failed"
        log "$PGWAKE_TAG: check ok (pgwake --help)"
    fi
    drop_superseded "$old" "$PGWAKE_TAG"
    drop_superseded "$BASE_SUPERSEDED" "$BASE_TAG"
    log "$PGWAKE_TAG: built in $((SECONDS - start)) s, $(image_size "$PGWAKE_TAG")"
}

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and chroot need it)"
docker info >/dev/null 2>&1 || die "no Docker engine answers; run deploy/docker/engine.sh up"
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap </dev/null ||
        { apt-get update -q </dev/null && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends debootstrap </dev/null; }
fi
# debootstrap and wget use http_proxy; take apt's proxy when the environment has none.
if [[ -z ${http_proxy:-} ]] && command -v apt-config >/dev/null; then
    eval "$(apt-config shell http_proxy Acquire::http::Proxy)"
    [[ -z ${http_proxy:-} ]] || { export http_proxy; log "using apt's http proxy"; }
fi

if ((do_postgres)); then
    for spec in "${POSTGRES_IMAGES[@]}"; do
        build_postgres "${spec%%:*}" "${spec#*:}"
    done
fi
if ((do_pgwake)); then
    build_base
    build_pgwake
fi
