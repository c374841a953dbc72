#!/usr/bin/env bash
# Save or restore finished shards of moses_xtb builds (see README.md here). A saved file is named
# after its build folder (<folder>.shards_FFF-LLL.tar.xz) and goes back into build/<folder>.
#   bash datasets/moses_xtb/build_checkpoint/checkpoint.sh save FIRST LAST [BUILD_DIR]
#   bash datasets/moses_xtb/build_checkpoint/checkpoint.sh restore [BUILD_ROOT]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  save)
    first=$2; last=$3; build=${4:-build/moses_xtb}
    files=()
    for i in $(seq "$first" "$last"); do
      for ext in sdf failures.csv json; do
        f=$(printf 'shards/shard_%06d.%s' "$i" "$ext")
        [[ -f "$build/$f" ]] || { echo "checkpoint: $build/$f missing (shard $i not finished?)" >&2; exit 1; }
        files+=("$f")
      done
      # a shard restored from the committed data set carries no timings: it is in the data set already
      if grep -q '"restored_from"' "$build/$(printf 'shards/shard_%06d.json' "$i")"; then
        echo "checkpoint: shard $i was restored from the data set; not saved again" >&2; exit 1
      fi
    done
    out="$here/$(basename "$build").$(printf 'shards_%03d-%03d.tar.xz' "$first" "$last")"
    tar cJf "$out" --owner=0 --group=0 --mtime='2026-01-01' -C "$build" "${files[@]}"
    echo "$out: shards $first-$last of $build"
    ;;
  restore)
    root=${2:-build}
    shopt -s nullglob
    for f in "$here"/*.shards_*.tar.xz; do
      name=$(basename "$f"); build="$root/${name%%.shards_*}"
      mkdir -p "$build"
      tar xJf "$f" -C "$build" --skip-old-files
      echo "restored $name into $build"
    done
    ;;
  *) echo "usage: $0 save FIRST LAST [BUILD_DIR] | restore [BUILD_ROOT]" >&2; exit 2 ;;
esac
