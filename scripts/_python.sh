# Sourced by the scripts: pick interpreters without relying on pyenv shims (the bare
# `python3.13` shim fails unless that version is selected).
find_python() {  # find_python 3.13 -> path of a working python3.13, or nothing
  local v=$1 c
  for c in "python$v" "$(pyenv root 2>/dev/null)/versions/$v"*/bin/"python$v" \
           /usr/local/bin/"python$v" /usr/bin/"python$v"; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys, venv' >/dev/null 2>&1; then
      command -v "$c"; return 0
    fi
  done
  return 1
}

newest_python() {  # the newest Python 3.11+ found
  local v
  for v in 3.14 3.13 3.12 3.11; do find_python "$v" && return 0; done
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    command -v python3; return 0
  fi
  echo "error: Python 3.11 or newer is needed (none found on PATH or under pyenv)" >&2
  return 1
}

# make_venv DIR PYTHON EXTRAS [PIP_ARGS...]: create DIR with PYTHON and install .[EXTRAS]
make_venv() {
  local dir=$1 py=$2 extras=$3; shift 3
  local hash; hash=$(cat pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
  hash=$(echo "$hash $*" | sha1sum | cut -c1-12)
  local stamp="$dir/.installed-$hash-$extras"
  if [ -f "$stamp" ]; then return 0; fi
  # No extras asked for: any install of this same pyproject will do.
  if [ -z "$extras" ] && compgen -G "$dir/.installed-$hash-*" >/dev/null; then return 0; fi
  local spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  echo "==> creating $dir with $("$py" --version 2>&1) (extras: $extras)"
  [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if ! "$dir/bin/python" -m pip install -q -e "$spec" "$@" >"$dir/pip.log" 2>&1; then
    grep -v -e "^WARNING: Location" "$dir/pip.log" | tail -30
    echo "error: installing into $dir failed (full log: $dir/pip.log)" >&2
    return 1
  fi
  rm -f "$dir"/.installed-*; touch "$stamp"
}
