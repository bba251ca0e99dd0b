#!/usr/bin/env bash
# Set up (or check) the project environment in .venv: Python >= 3.12 and the locked packages.
#
# Safe to run any number of times: when .venv already matches requirements.lock and
# pyproject.toml it returns in about a second. Downloads go to a package cache outside the
# checkout (default ~/.cache/sciml/uv, override with SCIML_CACHE), so a second checkout on the
# same machine installs by linking from the cache instead of downloading gigabytes again.
# Choose the interpreter with SCIML_PYTHON=/path/to/python3.12 if it cannot be found.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SCIML_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sciml}
export UV_CACHE_DIR=${UV_CACHE_DIR:-$cache/uv}
uv_version=0.13.9
venv=$root/.venv

say() { printf '[setup] %s\n' "$*" >&2; }

python_ok() {  # $1 is a usable interpreter if it runs and is >= 3.12 with venv support (ensurepip: Debian ships it apart, in python3.12-venv)
    "$1" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
    local c
    if [ -n "${SCIML_PYTHON:-}" ]; then
        python_ok "$SCIML_PYTHON" && { echo "$SCIML_PYTHON"; return; }
        say "SCIML_PYTHON=$SCIML_PYTHON is not a working Python >= 3.12 with the venv module."
        return 1
    fi
    for c in python3.12 python3.13 python3.14 python3; do
        if command -v "$c" >/dev/null 2>&1 && python_ok "$(command -v "$c")"; then
            command -v "$c"; return
        fi
    done
    # pyenv keeps versions that are not on PATH unless selected.
    for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
        if [ -x "$c" ] && python_ok "$c"; then echo "$c"; return; fi
    done
    say "No Python >= 3.12 found (looked on PATH, in pyenv's versions and /usr/bin)."
    say "Install one (e.g. 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv')"
    say "or point SCIML_PYTHON at it, then rerun this script."
    return 1
}

find_uv() {
    if command -v uv >/dev/null 2>&1; then command -v uv; return; fi
    local boot=$cache/bootstrap
    if [ ! -x "$boot/bin/uv" ]; then
        say "installing uv $uv_version into $boot"
        rm -rf "$boot"
        "$1" -m venv "$boot" >&2
        "$boot/bin/python" -m pip install --quiet "uv==$uv_version" >&2
    fi
    echo "$boot/bin/uv"
}

stamp_of() {  # what the environment depends on: the lock and the interpreter
    { cat "$root/requirements.lock"; "$1" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16
}

if [ -x "$venv/bin/python" ] && [ -f "$venv/.sciml-stamp" ] \
        && [ "$(cat "$venv/.sciml-stamp")" = "$(stamp_of "$venv/bin/python"):$(sha256sum < "$root/pyproject.toml" | cut -c1-16)" ]; then
    exit 0
fi

py=$(find_python)
uv=$(find_uv "$py")
stamp=$(stamp_of "$py")
say "using $("$py" --version 2>&1) at $py; package cache $cache"

# The locked packages live once per machine in $cache/envs/STAMP (compiled to bytecode, since
# importing torch and lightning from source costs ~25 s each time); checkouts share them.
shared=$cache/envs/$stamp
if [ ! -f "$shared/.complete" ]; then
    say "installing the locked packages into $shared (first time: a few GB of downloads and a few minutes)"
    rm -rf "$shared"
    "$uv" venv --quiet --python "$py" "$shared"
    "$uv" pip sync --quiet --compile-bytecode --python "$shared/bin/python" "$root/requirements.lock"
    touch "$shared/.complete"
fi

# The checkout's own .venv: a thin environment that sees the shared packages and holds sciml
# itself (editable) with its `sciml` command.
if [ ! -x "$venv/bin/python" ] || [ "$(stamp_of "$venv/bin/python")" != "$stamp" ]; then
    rm -rf "$venv"
    "$uv" venv --quiet --python "$py" "$venv"
fi
rm -f "$venv/.sciml-stamp"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
shared_site=$("$shared/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir('$shared_site')" > "$site/_sciml_shared_env.pth"
# Some wheels put libraries and tools under the environment's prefix (MPICH's libmpi for
# mpi4py/DOLFINx, found through sys.prefix): link those too.
for entry in "$shared"/lib/* "$shared"/include "$shared"/share "$shared"/bin/*; do
    [ -e "$entry" ] || continue
    rel=${entry#"$shared"/}
    case $rel in lib/python*|bin/python*|bin/activate*) continue ;; esac
    # Python entry points there run the shared interpreter, which cannot see sciml: use
    # `.venv/bin/python -m TOOL` instead.
    case $rel in bin/*) head -c 64 "$entry" | grep -q python && continue ;; esac
    [ -e "$venv/$rel" ] || ln -s "$entry" "$venv/$rel"
done
"$uv" pip install --quiet --no-deps --python "$venv/bin/python" -e "$root"
echo "$stamp:$(sha256sum < "$root/pyproject.toml" | cut -c1-16)" > "$venv/.sciml-stamp"
say "environment ready: $venv"
