# Shell helpers shared by the launchers (sourced, not run).

# An error naming the calling script, and how to get its usage; exit status 2.
die() {
  local me; me=$(basename "$0")
  echo "$me: $*" >&2; echo "Run scripts/$me -h for usage." >&2; exit 2
}

# A shell word as it must be typed: bare when safe, otherwise single-quoted (after the "=" of a
# --flag=value, so that printed commands read naturally).
quote() {
  local s=$1 flag=""
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
    return
  fi
  if [[ $s =~ ^--[A-Za-z0-9_.-]+= ]]; then
    flag=${BASH_REMATCH[0]}
    s=${s#"$flag"}
  fi
  printf "%s'%s'" "$flag" "${s//\'/\'\\\'\'}"
}

# The command line of an argv, each word quoted as needed.
line() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}

# A flag that takes a value: "$1" is the flag, "$2" must be its value.
need_value() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value"; }
